"""Shutdown: a SIGTERM drains the server instead of dropping what is in flight."""

from __future__ import annotations

import threading
from types import FrameType

import uvicorn

from softprompt.serving.server import Service


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, with a SIGTERM (or a first Ctrl-C) that drains instead of stopping at once.

    Kubernetes takes a terminating pod out of its Service's endpoints while it sends SIGTERM, and the two race:
    so readiness turns false first and requests are still served for `serve.drain_delay_s`; then uvicorn stops
    accepting and gives the requests in flight `serve.drain_grace_s` (its timeout_graceful_shutdown); then the
    app's shutdown closes the batcher, which answers what is queued. A second signal stops at once, and so does
    the first one while nothing is loaded yet.
    """

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.service.draining or self.service.server is None:
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)  # re-raised once stopped, as uvicorn does: the exit status says why
        self.service.start_draining()
        timer = threading.Timer(self.service.settings.drain_delay_s, self._stop)
        timer.daemon = True
        timer.start()

    def _stop(self) -> None:
        self.should_exit = True
