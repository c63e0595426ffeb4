"""LLM Scratch Studio: `python app.py [--host H] [--port N] [--user U --password P]`.

Builds the Gradio app from ``ui`` (no ML here) and serves it; the default model loads in the background so the
page is usable within seconds. Host, port and login also come from STUDIO_HOST / GRADIO_SERVER_NAME,
STUDIO_PORT / GRADIO_SERVER_PORT, STUDIO_USER / STUDIO_PASSWORD.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from ui import create_ui, launch_kwargs, parse_settings

    settings = parse_settings(argv)
    demo = create_ui(settings)
    demo.queue(default_concurrency_limit=2, max_size=64)
    print(f"LLM Scratch Studio on http://{settings.host}:{settings.port}"
          + (" (login required)" if settings.auth else ""), flush=True)
    demo.launch(**launch_kwargs(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
