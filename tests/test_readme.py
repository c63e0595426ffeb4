"""Every command in the README's "Command line" block runs as written and does what a reader expects.

Each command is run through bash from the repository root, exactly as printed, with a few arguments appended
(argparse keeps the last value) so it finishes in seconds and writes into a temporary folder instead of ./data.
A command that is added to or changed in the README without a check here fails the first test: the README
cannot drift from what the project does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """The command lines of the README's "Command line" section (comments stripped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


# command prefix -> (arguments appended, stdin, check of (stdout, tmp folder)); {tmp} is the temporary folder
CHECKS: dict[str, tuple[list[str], str | None, object]] = {
    "-m llm_core generate --model": ([], None, lambda out, tmp: "Paris" in out),
    "-m llm_core generate --prompt": (["--seed", "0"], None, lambda out, tmp: len(out.split()) >= 10),
    "-m llm_core chat": (["--seed", "0"], "What is the capital of France?\n/exit\n", lambda out, tmp: "Paris" in out),
    "-m llm_core.training": (["--max-time", "4", "--out", "{tmp}/checkpoints/shakes"], None,
                          lambda out, tmp: (tmp / "checkpoints/shakes/model.safetensors").is_file()),
    "-m rag ingest": ([], None, lambda out, tmp: (tmp / "home/rag/mydocs").is_dir()),
    "-m rag query": ([], None, lambda out, tmp: "TERM" in json.loads(out)["answer"]),
    "-m finetune --model": (["--max-steps", "1", "--batch-size", "2", "--val-fraction", "0.03", "--out",
                             "{tmp}/adapters/demo"], None,
                            lambda out, tmp: (tmp / "adapters/demo/adapter_config.json").is_file()),
    "-m finetune merge": (["--adapter", "{tmp}/adapters/demo", "--out", "{tmp}/checkpoints/demo-merged"], None,
                          lambda out, tmp: (tmp / "checkpoints/demo-merged/config.json").is_file()),
    "-m llm_core export": (["--adapter", "{tmp}/adapters/demo", "--out", "{tmp}/exports/demo-q8_0.gguf"], None,
                           lambda out, tmp: json.loads(out)["outtype"] == "q8_0"
                           and (tmp / "exports/demo-q8_0.gguf").stat().st_size > 100_000_000
                           and (tmp / "exports/demo-q8_0.Modelfile").read_text().startswith("FROM ./demo-q8_0.gguf")),
}


def check_for(command: str) -> tuple[str, tuple]:
    matches = [k for k in CHECKS if f".venv/bin/python {k}" in command]
    assert len(matches) == 1, f"README command without a check in tests/test_readme.py: {command}"
    return matches[0], CHECKS[matches[0]]


def test_every_readme_command_has_a_check() -> None:
    commands = readme_commands()
    assert len(commands) >= 5
    assert sorted(check_for(c)[0] for c in commands) == sorted(CHECKS)  # and no check is left without its command


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:  # noqa: ANN001
    """One folder for the whole README walk: later commands use what earlier ones made (ingest -> query)."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_works_as_written(command: str, sandbox: Path) -> None:
    _, (extra, stdin, check) = check_for(command)
    line = command.replace(".venv/bin/python", shlex.quote(sys.executable), 1)
    line += "".join(" " + shlex.quote(a.format(tmp=sandbox)) for a in extra)
    env = dict(os.environ, HF_HUB_OFFLINE="1", LLM_STUDIO_HOME=str(sandbox / "home"), PYTHONPATH=str(ROOT))
    r = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{command}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    assert check(r.stdout, sandbox), f"{command}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"


def test_reading_order_names_files_that_exist() -> None:
    """The README's "Read the code in this order" walk names real files: a path sets the folder, a bare name is
    read in the folder of the path before it."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Read the code in this order", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`([\w./]+(?:\.py|/))`", section)
    assert len(names) >= 30, names
    folder, missing = ROOT, []
    for name in names:
        path = ROOT / name if "/" in name.rstrip("/") else folder / name
        if "/" in name.rstrip("/"):
            folder = path if name.endswith("/") else path.parent
        if not path.exists():
            missing.append(name)
    assert not missing, f"the README's reading order names files that do not exist: {missing}"
