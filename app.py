"""LLM Scratch Studio: `python app.py [--host H] [--port N] [--user U --password P]`.

Serves the Gradio app from ``ui`` (no ML here) at ``/`` and the OpenAI-compatible API (``api``) at ``/v1`` on the
same port; the default model loads in the background so the page is usable within seconds. Host, port and login
also come from STUDIO_HOST / GRADIO_SERVER_NAME, STUDIO_PORT / GRADIO_SERVER_PORT, STUDIO_USER / STUDIO_PASSWORD;
the API key from STUDIO_API_KEY (required beyond loopback or with login).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from api import build_app, run
    from ui import launch_kwargs, parse_settings

    settings = parse_settings(argv)
    app, demo = build_app(settings)
    login = " (login required)" if settings.auth else ""
    if settings.share:  # a gradio.live link needs Gradio's own launcher; the API is not served through it
        print(f"LLM Scratch Studio on http://{settings.host}:{settings.port}{login}; --share serves no /v1 API",
              flush=True)
        demo.launch(**launch_kwargs(settings))
        return
    print(f"LLM Scratch Studio on http://{settings.host}:{settings.port}{login} · "
          f"OpenAI-compatible API at /v1", flush=True)
    run(app, settings.host, settings.port)


if __name__ == "__main__":
    main(sys.argv[1:])
