"""`softprompt serve`: every task's production prompt from one frozen model, over HTTP (README "Serve")."""

from __future__ import annotations

import logging

from softprompt.errors import SoftpromptError

log = logging.getLogger("softprompt.serve")


def parse_tasks(text: str | None) -> list[str] | None:
    """`rte,cb` -> ["rte", "cb"], each a known task; None or "" -> None (every task in production)."""
    if not text:
        return None
    from softprompt.tasks import get_task

    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    for name in names:
        get_task(name)  # an unknown task name fails here, with the list of known ones
    if len(set(names)) != len(names):
        raise SoftpromptError(f"--tasks {text!r}: a task is named twice")
    return names


def serve(model: str, registry: str, tasks: str | None = None, **overrides: object) -> None:
    """Load the base once and each task's production prompt, then serve HTTP until interrupted."""
    import uvicorn

    from softprompt.models import load_base
    from softprompt.serving.app import create_app
    from softprompt.serving.server import PromptServer, ServeSettings
    from softprompt.serving.source import RegistrySource

    settings = ServeSettings.load(**overrides)
    names = parse_tasks(tasks)
    source = RegistrySource(registry)
    try:
        server = PromptServer(load_base(model), source, settings, names)
    except BaseException:
        source.close()
        raise
    served = ", ".join(f"{t} {v}" for t, v in server.snapshot.versions().items())
    log.info("serving %s on http://%s:%d (base %s)", served, settings.host, settings.port, model)
    try:
        uvicorn.run(create_app(server, close_on_shutdown=True), host=settings.host, port=settings.port,
                    log_level="warning", access_log=False)
    finally:
        server.close()  # when uvicorn fails to start (a port in use); closing twice is harmless
