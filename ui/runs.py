"""Earlier training runs, as a person finds them again: one JSON record per run.

``data_dir()/runs/<kind>/<name>.json`` holds the run's name, status, step, dates, the trainer config that starts
it again, and the loss history the plot draws (so a resumed run shows its whole curve). Records are written
atomically (temp file + os.replace). They live beside the run folders, not in them: a pretraining checkpoint
folder is replaced whole at every save.

Names: the same settings give the same name (``<stem>-<hash of the settings>``), so pressing Start again with
them resumes a stopped run; a finished run's name is never reused silently (the new run gets ``-2``, ``-3``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_core.atomic import atomic_path, write_json
from ui.settings import data_dir

VERSION = 1
SPLITS = ("train", "validation")


@dataclass
class RunRecord:
    kind: str  # "finetune" | "pretrain"
    name: str
    output: str  # the run folder (adapter or checkpoint)
    config: dict[str, Any]  # FinetuneConfig / TrainConfig as a dict: enough to start the run again
    key: str = ""  # hash of the settings that define the run
    status: str = "running"  # running | stopped | finished | failed (running in a record with no job: interrupted)
    step: int = 0
    total_steps: int | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    metrics: list[dict] = field(default_factory=list)  # rows {"step", "loss", "split"}, as the plot takes them

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = {s: [[m["step"], m["loss"]] for m in self.metrics if m["split"] == s] for s in SPLITS}
        return {"version": VERSION, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunRecord:
        m = d.get("metrics") or {}
        rows = [{"step": int(s), "loss": float(v), "split": split} for split in SPLITS for s, v in m.get(split, [])]
        keep = {k: d[k] for k in ("kind", "name", "output", "config", "key", "status", "step", "total_steps",
                                  "started_at", "updated_at") if k in d}
        return cls(**keep, metrics=sorted(rows, key=lambda r: (r["split"] != "train", r["step"])))


def runs_dir(kind: str) -> Path:
    return data_dir() / "runs" / kind


def record_path(kind: str, name: str) -> Path:
    return runs_dir(kind) / f"{name}.json"


def save_record(rec: RunRecord) -> Path:
    """Write the record atomically; a crash mid-write leaves the previous one."""
    path = record_path(rec.kind, rec.name)
    rec.updated_at = time.time()
    write_json(path, rec.to_json(), indent=None)
    return path


def load_record(kind: str, name: str) -> RunRecord | None:
    path = record_path(kind, name)
    try:
        return RunRecord.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"the record of run '{name}' is unreadable ({e})") from None


def list_runs(kind: str) -> list[RunRecord]:
    """Every readable record of ``kind`` whose run folder still exists, newest first."""
    out = []
    for path in runs_dir(kind).glob("*.json"):
        try:
            rec = load_record(kind, path.stem)
        except ValueError:
            continue
        if rec is not None and Path(rec.output).exists():
            out.append(rec)
    return sorted(out, key=lambda r: r.updated_at, reverse=True)


def settings_key(config: dict[str, Any]) -> str:
    """A short stable hash of a run's settings (the output folder left out)."""
    d = {k: v for k, v in config.items() if k != "out_dir"}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def stable_copy(path: str | Path) -> Path:
    """An uploaded file copied to ``data_dir()/uploads/<content hash>/<name>``: the upload's temporary path
    changes with every upload (and may be cleaned up), the copy stays, so the same file gives the same settings
    and a resumed run finds its data."""
    from ui.users import workspace

    src = Path(path)
    dest = data_dir() / "uploads" / file_digest(src) / safe_name(src.name, "data")
    if not dest.is_file():
        workspace().check_room(src.stat().st_size)  # a scratch space's quota: refused in words, nothing lost
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    return dest


def safe_name(text: str, fallback: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", (text or "").strip()).strip("-.") or fallback


def taken(kind: str, name: str, folder: Path) -> bool:
    return record_path(kind, name).exists() or folder.exists()


def choose_name(kind: str, stem: str, key: str, folder_of: Any, resumable: Any) -> tuple[str, bool]:
    """(name, resume) for automatic naming: ``<stem>-<key>`` when free or a resumable earlier run with these
    settings; otherwise the first free ``<stem>-<key>-N``."""
    base = f"{stem}-{key}"
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        if not taken(kind, name, folder_of(name)):
            return name, False
        rec = load_record(kind, name)
        if rec is not None and rec.key == key and resumable(rec):
            return name, True
    raise ValueError(f"more than 999 runs are named {base}; delete some or give this one a name")


def run_name(kind: str, typed: str, stem: str, key: str, folder_of: Any, resumable: Any) -> tuple[str, bool]:
    """(name, resume) for a new Start: a typed name, refused in words when an earlier run holds it (unless that
    run is stopped with the same settings: then it resumes), else ``choose_name``'s automatic one. A full
    scratch space (a public Space's session quota) refuses a new run in words."""
    from ui.users import workspace

    workspace().check_room()
    name = safe_name(typed, "")
    if not name:
        return choose_name(kind, stem, key, folder_of, resumable)
    if not taken(kind, name, folder_of(name)):
        return name, False
    rec = load_record(kind, name)
    if rec is None or rec.key != key or not resumable(rec):
        why = "finished" if rec is not None and rec.status == "finished" else \
            "made with other settings" if rec is not None and rec.key != key else "already there"
        raise ValueError(f"An earlier run is named '{name}' ({why}); type another name, or leave the name empty "
                         "for an automatic one. To continue a stopped run, pick it under Earlier runs and press "
                         "Resume.")
    return name, True


def record_to_resume(kind: str, name: str | None, resumable: Any, finished: str, no_state: str) -> RunRecord:
    """The earlier run the Resume button names, or a ValueError saying why it cannot continue (``finished`` and
    ``no_state`` are the tab's own words for a finished run and for one with nothing saved to resume from)."""
    rec = load_record(kind, name) if name else None
    if rec is None:
        raise ValueError("Pick an earlier run to resume.")
    if rec.status == "finished":
        raise ValueError(finished)
    if not resumable(rec):
        raise ValueError(no_state)
    return rec


def history_until(rec: RunRecord, step: int) -> list[dict]:
    """The plot rows a resume from ``step`` keeps: what was measured up to the checkpoint (steps after it are
    run again)."""
    return [dict(m) for m in rec.metrics if m["step"] <= step]


def table(runs: list[RunRecord], running: str | None = None) -> list[list[Any]]:
    """Rows for the tabs' run list: name, step, status, date."""
    rows = []
    for r in runs:
        status = r.status
        if status == "running" and r.name != running:
            status = "interrupted"
        step = f"{r.step}" + (f" / {r.total_steps}" if r.total_steps else "")
        rows.append([r.name, step, status, time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at))])
    return rows
