"""The serving state: the frozen base, the snapshot of production prompts, the batcher and the registry watch.

A background thread checks the registry every `poll_interval_s`. A task whose production version changed is
pulled, checked and loaded beside the serving snapshot, then swapped in with one reference assignment; the
batches already running finish on the old snapshot, the next ones use the new. A prompt trained on another base
is refused: the old version keeps serving, the refusal is logged and counted, and it is not retried until the
registry names another version.
"""

from __future__ import annotations

import logging
import threading
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
        for name in ("port", "max_batch_size", "max_body_bytes", "max_instances", "max_input_tokens"):
            value = getattr(settings, name)
            if not isinstance(value, int) or value < (0 if name == "port" else 1):  # port 0: any free port
                raise SoftpromptError(f"serve.{name}: must be a positive integer, got {value!r}")
        if settings.max_wait_ms < 0 or settings.poll_interval_s <= 0:
            raise SoftpromptError("serve.max_wait_ms must be >= 0 and serve.poll_interval_s > 0")
        return settings

    @property
    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_instances, self.max_input_tokens)


class PromptServer:
    """Serves the production prompt of each task over one frozen base model."""

    def __init__(self, base: Base, source: RegistrySource, settings: ServeSettings,
                 tasks: list[str] | None = None) -> None:
        self.base, self.source, self.settings = base, source, settings
        self.fixed_tasks = tasks  # None: every task with a production prompt, new ones as they appear
        self.metrics = ServeMetrics()
        self.snapshot = PromptSet(base, {})
        self.refused: dict[str, int] = {}  # task -> the version refused (not retried until another is promoted)
        self._swap = threading.Lock()
        self._load_initial()
        self.batcher = MicroBatcher(self._run, settings.max_batch_size, settings.max_wait_ms,
                                    on_batch=lambda rows, s: self.metrics.observe_batch([r.task for r in rows], s))
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
        """Load every task whose production version differs from the one served."""
        self.source.refresh()
        if not self.source.changed():
            return
        for task, number in sorted(self.source.production().items()):
            if self.fixed_tasks is not None and task not in self.fixed_tasks:
                continue
            current = self.snapshot.prompts.get(task)
            if (current and current.version == f"v{number}") or self.refused.get(task) == number:
                continue
            try:
                self._install(task, number)
            except BaseMismatch as e:
                self._refuse(task, number, "base_mismatch", str(e))
            except SoftpromptError as e:
                self._refuse(task, number, "invalid", str(e))

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
