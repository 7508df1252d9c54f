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


def redact_logs() -> None:
    """Keep the registry token out of every log line: a filter on each handler of the root and uvicorn's loggers
    (a filter on a logger would miss the records its child loggers propagate)."""
    from softprompt.registry.git import redact_token_filter

    token_filter = redact_token_filter()
    for name in ("", "uvicorn", "uvicorn.access", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(token_filter)


def serve(model: str, registry: str, tasks: str | None = None, device: str | None = None, dtype: str | None = None,
          **overrides: object) -> None:
    """Bind the port, then load the base (on `softprompt.device.choose_placement(device, dtype)`) and each task's
    production prompt in the background (readiness is 503 until then), and serve HTTP until SIGTERM/SIGINT, which
    drains (lifecycle.DrainingServer)."""
    import uvicorn

    from softprompt.device import choose_placement
    from softprompt.models import load_base
    from softprompt.serving.app import create_app
    from softprompt.serving.lifecycle import DrainingServer
    from softprompt.serving.server import PromptServer, ServeSettings, Service
    from softprompt.serving.source import RegistrySource

    settings = ServeSettings.load(**overrides)
    placement = choose_placement(device, dtype)
    return_freed_tensors_to_the_os()
    names = parse_tasks(tasks)
    service = Service(settings)
    config = uvicorn.Config(create_app(service, close_on_shutdown=True), host=settings.host, port=settings.port,
                            log_level="warning", access_log=False, timeout_graceful_shutdown=settings.drain_grace_s)
    redact_logs()  # after uvicorn.Config, which installs uvicorn's handlers
    http = DrainingServer(config, service)

    def build(metrics: object) -> PromptServer:
        source = RegistrySource(registry)
        try:
            base = load_base(model, placement=placement)
            return PromptServer(base, source, settings, names, metrics=metrics)  # type: ignore[arg-type]
        except BaseException:
            source.close()
            raise

    def failed(error: BaseException) -> None:
        log.error("loading failed: %s", error)
        http.should_exit = True

    log.info("listening on http://%s:%d; loading base %s on %s (%s) and the production prompts", settings.host,
             settings.port, model, *placement.to_json().values())
    service.load(build, failed)
    try:
        http.run()
    finally:
        service.close()  # when uvicorn fails to start (a port in use); closing twice is harmless
    if isinstance(service.failure, Exception):
        raise service.failure  # a SoftpromptError gives its one-line message and exit status 2
