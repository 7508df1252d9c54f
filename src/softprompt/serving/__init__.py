"""`softprompt serve`: every task's production prompt from one frozen model, over HTTP (docs/serving.md)."""

from __future__ import annotations

import ctypes
import ctypes.util
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


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial threshold, kept fixed


def return_freed_tensors_to_the_os() -> bool:
    """Make glibc give every block of 128 KiB or more back to the OS when it is freed; False off glibc.

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which a batch's
    activations come from the heap and stay resident once freed: the server's RSS grew by tens of MiB at
    random moments and sat ~115 MiB higher (benchmarks/serving.py). A fixed threshold keeps RSS at what is
    live. This is mallopt(3) through ctypes because no Python library exposes it; MALLOC_MMAP_THRESHOLD_ in
    the environment does the same for a process started with it.
    """
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path) if path else None
        return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl or macOS: no mallopt; their allocators do not grow a threshold
        return False


def serve(model: str, registry: str, tasks: str | None = None, **overrides: object) -> None:
    """Load the base once and each task's production prompt, then serve HTTP until interrupted."""
    import uvicorn

    from softprompt.models import load_base
    from softprompt.serving.app import create_app
    from softprompt.serving.server import PromptServer, ServeSettings
    from softprompt.serving.source import RegistrySource

    settings = ServeSettings.load(**overrides)
    return_freed_tensors_to_the_os()
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
