"""One process, one port: the OpenAI-compatible API under ``/v1`` and the Gradio UI at ``/`` (a Hugging Face
Space exposes a single port), or the API alone (``python -m llm_core serve``).

The API needs a key (``STUDIO_API_KEY``, sent as ``Authorization: Bearer <key>``) whenever the server listens
beyond loopback or login is on; on 127.0.0.1 without login it is open, like the UI. On a shared deployment each
user gets their own key, ``STUDIO_API_KEYS="alice:key1,bob:key2"``: alice's key sees only alice's checkpoints,
adapters and collections (the folder her login sees in the UI, ``ui.users``). The single ``STUDIO_API_KEY`` acts
as the one login when there is exactly one, else on the deployment's own data folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from .backend import Backend
from .openai_api import create_api

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeArgs:
    """``python -m llm_core serve``: the API without the UI."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "smollm2-135m-instruct"
    llm_url: str | None = None  # an external OpenAI-compatible backend (api.backend); default $STUDIO_LLM_URL
    llm_model: str | None = None  # the model it runs; default $STUDIO_LLM_MODEL
    llm_key: str | None = None  # its API key; default $STUDIO_LLM_KEY (better: a key on the command line shows in ps)


def key_policy(host: str, login: bool, env: dict[str, str] | None = None) -> tuple[str | None, bool]:
    """(api key, whether one is required)."""
    env = dict(os.environ if env is None else env)
    return (env.get("STUDIO_API_KEY") or None), (host not in LOOPBACK or login)


def build_app(settings: Any, registry: Any = None, with_ui: bool = True,
              backend: Backend | None = None) -> tuple[FastAPI, Any]:
    """(FastAPI app, Gradio Blocks or None) for ``ui.Settings``: the API under /v1, the UI mounted at /.
    ``backend``: an external model server for the API (default: the one ``STUDIO_LLM_URL`` names, if any)."""
    from ui.models import ModelRegistry
    from ui.users import parse_api_keys

    registry = registry or ModelRegistry(settings.model)
    key, required = key_policy(settings.host, settings.auth is not None)
    try:
        keys = {k: user for k, user in parse_api_keys().items() if user}  # the single key: api_key below
        backend = backend or Backend.from_settings()
    except ValueError as e:
        raise SystemExit(str(e)) from e
    auth = settings.auth
    single_login = auth[0] if isinstance(auth, tuple) else None  # the one login the single key acts as
    app = create_api(registry, api_key=key, require_key=required, api_keys=keys, key_user=single_login,
                     backend=backend)
    if not with_ui:
        return app, None
    import gradio as gr

    from ui import create_ui, launch_kwargs

    demo = create_ui(settings, registry)
    demo.queue(default_concurrency_limit=2, max_size=64)
    kw = {k: v for k, v in launch_kwargs(settings).items() if k not in ("server_name", "server_port", "share")}
    app = gr.mount_gradio_app(app, demo, path="/", server_name=settings.host, server_port=settings.port, **kw)
    return app, demo


def run(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted (uvicorn, as Gradio itself uses)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


def serve_main(args: ServeArgs) -> int:
    """The API alone: no UI, no Gradio."""
    from ui.models import ModelRegistry
    from ui.settings import Settings

    settings = Settings(host=args.host, port=args.port, model=args.model, preload=False)
    try:
        backend = Backend.from_settings(args.llm_url, args.llm_model, args.llm_key)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    app, _ = build_app(settings, ModelRegistry(args.model), with_ui=False, backend=backend)
    from ui.users import parse_api_keys

    key, required = key_policy(args.host, False)
    if required and not key and not parse_api_keys():
        print("warning: listening beyond this computer without STUDIO_API_KEY: every API request is refused "
              "until the server is started with a key", flush=True)
    via = f"; {backend.model} from {backend.url}" if backend is not None else ""
    print(f"LLM Scratch Studio API on http://{args.host}:{args.port}/v1 (model {args.model}{via})", flush=True)
    run(app, args.host, args.port)
    return 0
