"""An OpenAI-compatible HTTP API for the studio's models (``/v1``), served beside the UI or alone."""

from .backend import Backend
from .openai_api import create_api, model_ids
from .schemas import APIError
from .server import ServeArgs, build_app, key_policy, run, serve_main

__all__ = ["APIError", "Backend", "ServeArgs", "build_app", "create_api", "key_policy", "model_ids", "run", "serve_main"]
