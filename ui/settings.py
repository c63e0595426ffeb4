"""Where the app listens and who may log in: environment variables, overridden by command-line flags.

Binds 127.0.0.1 by default (a learner's laptop should not expose a model to the network); a Hugging Face
Space sets ``GRADIO_SERVER_NAME=0.0.0.0`` (or ``SPACE_ID``), which we honour.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    user: str | None = None
    password: str | None = None
    model: str = "smollm2-135m-instruct"  # default chat model (name or checkpoint folder)
    preload: bool = True  # load the default model in the background at start-up
    share: bool = False
    accounts: tuple[tuple[str, str], ...] = ()  # more logins (STUDIO_USERS="alice:pw1,bob:pw2")

    @property
    def auth(self) -> tuple[str, str] | list[tuple[str, str]] | None:
        """(user, password) when login is on (both must be set); a list when there are several accounts, each
        with its own private data folder (``ui.users``)."""
        single = [(self.user, self.password)] if self.user and self.password else []
        logins = single + [a for a in self.accounts if a not in single]
        if not logins:
            return None
        return logins[0] if len(logins) == 1 else logins


def _env_port(env: dict[str, str]) -> int:
    raw = env.get("STUDIO_PORT") or env.get("GRADIO_SERVER_PORT") or "7860"
    try:
        port = int(raw)
    except ValueError as e:
        raise SystemExit(f"port {raw!r} from the environment is not a number") from e
    return port


def parse_accounts(raw: str | None) -> tuple[tuple[str, str], ...]:
    """``"alice:pw1,bob:pw2"`` -> ((alice, pw1), (bob, pw2)); a malformed entry is refused by its position
    (never echoing a password)."""
    out = []
    for i, part in enumerate((raw or "").split(",")):
        if not part.strip():
            continue
        user, sep, pw = part.strip().partition(":")
        if not sep or not user.strip() or not pw:
            raise SystemExit(f"STUDIO_USERS entry {i + 1} is not 'user:password' (entries are separated by commas)")
        out.append((user.strip(), pw))
    return tuple(out)


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1..65535")
    return port


def parse_settings(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default ``os.environ``) with ``argv`` flags taking precedence."""
    env = dict(os.environ if env is None else env)
    default_host = "0.0.0.0" if env.get("SPACE_ID") else "127.0.0.1"
    p = argparse.ArgumentParser(prog="app.py", description="LLM Scratch Studio: the Gradio app.")
    p.add_argument("--host", default=env.get("STUDIO_HOST") or env.get("GRADIO_SERVER_NAME") or default_host,
                   help="interface to bind (env STUDIO_HOST / GRADIO_SERVER_NAME; default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=_env_port(env),
                   help="port (env STUDIO_PORT / GRADIO_SERVER_PORT; default 7860)")
    p.add_argument("--user", default=env.get("STUDIO_USER"), help="login user name (env STUDIO_USER)")
    p.add_argument("--password", default=env.get("STUDIO_PASSWORD"),
                   help="login password (env STUDIO_PASSWORD); login is on when user and password are both set")
    p.add_argument("--model", default=env.get("STUDIO_MODEL") or "smollm2-135m-instruct",
                   help="default chat model: a name or a checkpoint folder (env STUDIO_MODEL)")
    p.add_argument("--no-preload", action="store_true", help="load the default model on first use, not at start")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    a = p.parse_args(argv)
    if bool(a.user) != bool(a.password):
        p.error("login needs both a user and a password (STUDIO_USER and STUDIO_PASSWORD, or --user and --password)")
    return Settings(host=a.host, port=a.port, user=a.user, password=a.password, model=a.model,
                    preload=not a.no_preload, share=a.share, accounts=parse_accounts(env.get("STUDIO_USERS")))


def data_dir() -> Path:
    """The data folder (checkpoints/, adapters/, rag/, runs/) of whoever the current request is: the one
    ``llm_core.paths.data_dir()`` on a desktop, a login's or a browser session's own folder on a shared
    deployment (``ui.users.workspace``)."""
    from ui.users import workspace

    return workspace().root
