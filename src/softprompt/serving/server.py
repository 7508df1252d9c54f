"""The serving state: the frozen base, the snapshot of production prompts, the batcher and the registry watch.

A background thread checks the registry every `poll_interval_s`. A task whose production version changed is
pulled, checked and loaded beside the serving snapshot, then swapped in with one reference assignment; the
batches already running finish on the old snapshot, the next ones use the new. A prompt trained on another base
is refused: the old version keeps serving, the refusal is logged and counted, and it is not retried until the
registry names another version. Any other failure to load a promotion is isolated to its task: counted under a
reason, and retried with exponential backoff while the other tasks are checked as usual.

`Service` is what the HTTP app sees: it binds before anything is loaded (loading -> serving -> draining), so
probes answer while a large base loads and readiness turns false before a SIGTERM drain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.models import Base
from softprompt.prompt import BaseMismatch
from softprompt.serving.batcher import MicroBatcher
from softprompt.serving.engine import PromptSet, Row, load_served_prompt
from softprompt.serving.metrics import ServeMetrics
from softprompt.serving.requests import Limits
from softprompt.serving.source import RegistrySource

log = logging.getLogger("softprompt.serve")
_INTS = ("port", "max_batch_size", "max_body_bytes", "max_instances", "max_input_tokens", "max_queue_rows")
_POSITIVE = ("poll_interval_s", "request_timeout_s", "liveness_stall_s", "backoff_initial_s", "backoff_max_s")


@dataclass(frozen=True)
class ServeSettings:
    """params.yaml `serve:` (command-line options override)."""

    host: str
    port: int
    max_batch_size: int
    max_wait_ms: float
    poll_interval_s: float
    max_body_bytes: int
    max_instances: int
    max_input_tokens: int
    max_queue_rows: int  # rows waiting for a pass; beyond, 503 + Retry-After
    request_timeout_s: float  # a request not in a pass by then is dropped (503)
    liveness_stall_s: float  # liveness fails when the batcher has not turned for this long
    drain_delay_s: float  # after SIGTERM: readiness false, still serving, for this long (endpoints update)
    drain_grace_s: float  # then in-flight requests get this long to finish
    backoff_initial_s: float  # a failed promotion is retried after this, doubling per failure ...
    backoff_max_s: float  # ... up to this
    mode: str  # the default mode of a request that names none

    @classmethod
    def load(cls, **overrides: Any) -> ServeSettings:
        from softprompt.config import load_params

        params = load_params()
        values = {**params["serve"], "mode": params["eval"]["mode"],
                  **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        missing = names - set(values)
        if missing:
            raise SoftpromptError(f"params.yaml: serve lacks {', '.join(sorted(missing))}; restore it from git")
        settings = cls(**{k: values[k] for k in names})
        for name in _INTS:
            value = getattr(settings, name)
            if not isinstance(value, int) or value < (0 if name == "port" else 1):  # port 0: any free port
                raise SoftpromptError(f"serve.{name}: must be a positive integer, got {value!r}")
        for name in _POSITIVE:
            if not getattr(settings, name) > 0:
                raise SoftpromptError(f"serve.{name}: must be > 0, got {getattr(settings, name)!r}")
        for name in ("max_wait_ms", "drain_delay_s", "drain_grace_s"):
            if getattr(settings, name) < 0:
                raise SoftpromptError(f"serve.{name}: must be >= 0, got {getattr(settings, name)!r}")
        return settings

    @property
    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_instances, self.max_input_tokens)


@dataclass
class _Retry:
    """A promotion that failed to load: which version, how many failures, when to try again."""

    number: int
    failures: int
    at: float  # time.monotonic()


def failure_reason(error: BaseException) -> str:
    """A bounded label for a failed promotion."""
    if isinstance(error, BrokenProcessPool):
        return "pool_broken"
    if isinstance(error, SoftpromptError):
        return "invalid"
    if isinstance(error, OSError):
        return "io"
    return "unexpected"


class PromptServer:
    """Serves the production prompt of each task over one frozen base model."""

    def __init__(self, base: Base, source: RegistrySource, settings: ServeSettings,
                 tasks: list[str] | None = None, metrics: ServeMetrics | None = None) -> None:
        self.base, self.source, self.settings = base, source, settings
        self.fixed_tasks = tasks  # None: every task with a production prompt, new ones as they appear
        self.metrics = metrics or ServeMetrics()
        self.snapshot = PromptSet(base, {})
        self.refused: dict[str, int] = {}  # task -> the version refused (not retried until another is promoted)
        self.retries: dict[str, _Retry] = {}  # task -> a promotion that failed to load, retried with backoff
        self._swap = threading.Lock()
        self._load_initial()
        self.metrics.last_sync.set_to_current_time()
        self.batcher = MicroBatcher(self._run, settings.max_batch_size, settings.max_wait_ms,
                                    on_batch=lambda rows, s: self.metrics.observe_batch([r.task for r in rows], s),
                                    max_queue_rows=settings.max_queue_rows,
                                    on_drop=lambda reason, n: self.metrics.dropped_rows.labels(reason).inc(n))
        self.metrics.queue_rows.set_function(lambda: self.batcher.queued_rows)
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_loop, name="softprompt-registry-watch", daemon=True)
        self._watch.start()

    def _load_initial(self) -> None:
        production = self.source.production()
        tasks = self.fixed_tasks if self.fixed_tasks is not None else sorted(production)
        if not tasks:
            raise SoftpromptError(f"{self.source.root}: no task has a production prompt; register and promote one, "
                                  "or name the tasks with --tasks")
        for task in tasks:
            if task not in production:
                raise SoftpromptError(f"{task}: no production prompt in the registry {self.source.root}; "
                                      f"promote one (`softprompt registry promote --task {task} --version N`) "
                                      "or drop it from --tasks")
            self._install(task, production[task])

    def _install(self, task: str, number: int) -> None:
        served = load_served_prompt(self.base, task, self.source.fetch(task, number), f"v{number}")
        with self._swap:
            old = self.snapshot.prompts.get(task)
            self.snapshot = self.snapshot.with_prompt(served)  # one reference assignment: atomic for readers
        self.metrics.set_version(task, old.version if old else None, served.version)
        log.info("serving %s %s%s", task, served.version, f" (was {old.version})" if old else "")

    def check_registry(self) -> None:
        """Load every task whose production version differs from the one served.

        One task's failure never stops the others: each is tried in its own `try`, and a failed one waits out
        its backoff (`retries`) while the rest are checked as usual.
        """
        self.source.refresh()
        if self.source.changed() or self._retry_due():
            for task, number in sorted(self.source.production().items()):
                if self._wanted(task, number):
                    self._try_install(task, number)
        self.metrics.last_sync.set_to_current_time()

    def _retry_due(self) -> bool:
        now = time.monotonic()
        return any(retry.at <= now for retry in self.retries.values())

    def _wanted(self, task: str, number: int) -> bool:
        """Whether `task` v`number` should be loaded now (not served already, not refused, not backing off)."""
        if self.fixed_tasks is not None and task not in self.fixed_tasks:
            return False
        current = self.snapshot.prompts.get(task)
        if (current and current.version == f"v{number}") or self.refused.get(task) == number:
            self.retries.pop(task, None)
            return False
        retry = self.retries.get(task)
        return retry is None or retry.number != number or retry.at <= time.monotonic()

    def _try_install(self, task: str, number: int) -> None:
        try:
            self._install(task, number)
            self.retries.pop(task, None)
        except BaseMismatch as e:
            self._refuse(task, number, "base_mismatch", str(e))
        except Exception as e:  # noqa: BLE001 - a corrupt file, a DVC or git error, a broken pool: this task only
            self._back_off(task, number, e)

    def _back_off(self, task: str, number: int, error: BaseException) -> None:
        previous = self.retries.get(task)
        failures = previous.failures + 1 if previous and previous.number == number else 1
        delay = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (failures - 1))
        self.retries[task] = _Retry(number, failures, time.monotonic() + delay)
        reason = failure_reason(error)
        self.metrics.promotion_failures.labels(task, reason).inc()
        first_line = (str(error).splitlines() or [""])[0]
        log.warning("cannot load %s v%d (%s: %s: %s); retrying in %.1f s", task, number, reason,
                    type(error).__name__, first_line, delay)

    def _refuse(self, task: str, number: int, reason: str, message: str) -> None:
        self.refused[task] = number
        self.metrics.refusals.labels(task, reason).inc()
        current = self.snapshot.prompts.get(task)
        log.warning("refused %s v%d (%s): %s; %s", task, number, reason, message,
                    f"{current.version} keeps serving" if current else "the task stays unserved")

    def _watch_loop(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.check_registry()
            except Exception as e:  # noqa: BLE001 - a registry hiccup must not stop serving; try again next poll
                self.source.forget()
                self.metrics.promotion_failures.labels("<registry>", failure_reason(e)).inc()
                log.warning("registry check failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)

    def _run(self, rows: list[Row]) -> list[dict[str, Any]]:
        return self.snapshot.run(rows)  # read once: the whole batch is answered by one snapshot

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._watch.join(timeout=30)
        self.batcher.close()
        self.source.close()


class Service:
    """What the HTTP app serves through the process's life: loading (no server yet), serving, draining.

    Invariants: `server` is set once, by the loader, and never replaced; `ready` is false while loading, once
    draining, and when no task is served; `live` is false only when loading failed or the batcher stalled.
    """

    def __init__(self, settings: ServeSettings, metrics: ServeMetrics | None = None) -> None:
        self.settings, self.metrics = settings, metrics or ServeMetrics()
        self.server: PromptServer | None = None
        self.failure: BaseException | None = None
        self.draining = False
        self._closed = threading.Event()

    @classmethod
    def of(cls, server: PromptServer) -> Service:
        """A service whose server is already loaded."""
        service = cls(server.settings, server.metrics)
        service.server = server
        return service

    def load(self, build: Callable[[ServeMetrics], PromptServer],
             on_failure: Callable[[BaseException], None]) -> threading.Thread:
        """Build the server in a background thread, so the port is bound (and probes answer) meanwhile; a
        failure is kept in `failure` and passed to `on_failure` (which stops the process)."""
        def run() -> None:
            try:
                server = build(self.metrics)
            except BaseException as e:  # noqa: BLE001 - reported through on_failure; the process then exits
                self.failure = e
                on_failure(e)
                return
            self.server = server
            if self._closed.is_set():  # shut down while loading
                server.close()
            else:
                log.info("loaded; serving %s", ", ".join(f"{t} {v}" for t, v in server.snapshot.versions().items()))

        thread = threading.Thread(target=run, name="softprompt-load", daemon=True)
        thread.start()
        return thread

    @property
    def state(self) -> str:
        if self.failure is not None:
            return "failed"
        if self.server is None:
            return "loading"
        return "draining" if self.draining else "serving"

    @property
    def ready(self) -> bool:
        return self.state == "serving" and bool(self.server and self.server.snapshot.tasks)

    @property
    def live(self) -> bool:
        if self.server is None:
            return self.failure is None
        return self.server.batcher.alive(self.settings.liveness_stall_s)

    def start_draining(self) -> None:
        """Readiness false from now on (the load balancer stops sending); requests in flight still finish."""
        if not self.draining:
            self.draining = True
            log.info("draining: readiness is false; serving what is in flight")

    def close(self) -> None:
        self._closed.set()
        if self.server is not None:
            self.server.close()
