"""A dynamic micro-batcher: rows of concurrent requests, of any tasks, go through one model pass together.

Hand-written because no library here does it: KServe's and Ray Serve's batchers group requests per model, and
a task is one model there; here every task shares the model, so the batch is formed across tasks. One worker
thread owns the model: it waits for a first row, gathers more until `max_batch_size` rows or `max_wait_ms`
have passed, and runs them. torch releases the GIL, so the HTTP event loop keeps accepting meanwhile.

Invariants: the worker thread never dies of a request (a catch-all around each turn; every future it takes is
resolved exactly once, a future cancelled meanwhile is left alone); the queue never holds more than
`max_queue_rows` rows (`submit` raises `QueueFull` instead); a request whose deadline passed or whose future
was cancelled before its pass is dropped, not computed; `beat` is the time of the worker's last turn, which
liveness reads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("softprompt.serve")
Runner = Callable[[list[Any]], list[Any]]
IDLE_BEAT_S = 1.0  # an idle worker still turns (and beats) this often


class QueueFull(Exception):
    """The queue cannot take the request's rows now (or the batcher is closing): answer 503 + Retry-After."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before a model pass could take it."""


@dataclass
class _Item:
    rows: list[Any]
    future: Future = field(default_factory=Future)
    deadline: float | None = None  # time.monotonic() after which the rows are not worth computing
    queued: bool = True  # its rows still count in the queue's size


_CLOSE = _Item([])  # the sentinel close() queues: every item before it is still served


class MicroBatcher:
    """Runs `runner(rows) -> answers` on batches of at most `max_batch_size` rows from concurrent submissions.

    A request is never split across passes (a request larger than `max_batch_size` runs alone), so all its rows
    are answered by the same prompt versions. When a pass fails, its rows are retried one by one, so only the
    requests holding a bad row get the error.
    """

    def __init__(self, runner: Runner, max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[list[Any], float], None] | None = None, max_queue_rows: int | None = None,
                 on_drop: Callable[[str, int], None] | None = None) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or (max_queue_rows is not None and max_queue_rows < 1):
            raise ValueError("max_batch_size and max_queue_rows must be >= 1 and max_wait_ms >= 0")
        self.runner, self.max_batch_size, self.max_wait = runner, max_batch_size, max_wait_ms / 1000
        self.max_queue_rows = max_queue_rows
        self.on_batch, self.on_drop = on_batch, on_drop
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._carry: _Item | None = None  # a request that did not fit the last batch goes first in the next
        self._rows_lock = threading.Lock()
        self._queued_rows = 0  # rows submitted and not yet taken off the queue by the worker (nor cancelled)
        self._closing = False
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="softprompt-batcher", daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def alive(self, stall_s: float) -> bool:
        """The worker thread runs and has turned within `stall_s` seconds (a pass longer than that is a hang)."""
        return self._thread.is_alive() and time.monotonic() - self.beat < stall_s

    def submit(self, rows: Sequence[Any], deadline: float | None = None) -> Future:
        """A future of the answers to `rows`, in order; `QueueFull` when the queue cannot take them now.

        A request is admitted into an empty queue whatever its size (it could never be admitted otherwise).
        """
        item = _Item(list(rows), deadline=deadline)
        with self._rows_lock:
            if self._closing:
                raise QueueFull("the server is shutting down")
            limit = self.max_queue_rows
            if limit is not None and self._queued_rows and self._queued_rows + len(item.rows) > limit:
                raise QueueFull(f"{self._queued_rows} rows queued; {len(item.rows)} more would pass the limit "
                                f"of {limit}")
            self._queued_rows += len(item.rows)
        # A request cancelled while it waits (its client left) frees its room at once, not when a pass reaches it.
        item.future.add_done_callback(lambda f: self._unqueue(item) if f.cancelled() else None)
        self._queue.put(item)
        return item.future

    def _unqueue(self, item: _Item) -> None:
        with self._rows_lock:
            if item.queued:
                item.queued = False
                self._queued_rows -= len(item.rows)

    def close(self, timeout: float = 30) -> None:
        """Refuse new requests, serve those queued, stop the worker (waiting up to `timeout` seconds)."""
        with self._rows_lock:
            if self._closing:
                return
            self._closing = True
        self._queue.put(_CLOSE)
        self._thread.join(timeout=timeout)

    # ------------------------------------------------------------------------------------------ the worker

    def _loop(self) -> None:
        closed = False
        while not closed or self._carry:
            self.beat = time.monotonic()
            batch: list[_Item] = []
            try:
                first = self._carry or self._next(IDLE_BEAT_S)
                self._carry = None
                if first is None:
                    continue
                if first is _CLOSE:
                    return
                batch, closed = self._gather(first) if not closed else ([first], True)
                batch = self._admit(batch)
                if batch:
                    self._run(batch)
            except Exception as e:  # noqa: BLE001 - the catch-all: whatever went wrong, the worker lives on
                log.exception("batcher turn failed; the batcher carries on")
                for item in batch:
                    _resolve(item.future, error=e)

    def _next(self, timeout: float) -> _Item | None:
        """The next queued item (its rows leave the queue's count now: a batch being formed is not waiting)."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        self._unqueue(item)
        return item

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """The first request, and more until the batch is full or the wait is over; True once closed."""
        batch, size, deadline = [first], len(first.rows), time.monotonic() + self.max_wait
        while size < self.max_batch_size:
            item = self._next(max(0.0, deadline - time.monotonic()))
            if item is None:
                break
            if item is _CLOSE:
                return batch, True
            if size + len(item.rows) > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += len(item.rows)
        return batch, False

    def _admit(self, batch: list[_Item]) -> list[_Item]:
        """The items still worth computing, each marked running (so a later cancel() fails instead of racing
        the answer); expired ones get `DeadlineExceeded`, cancelled ones are dropped."""
        kept, now = [], time.monotonic()
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                self._dropped("cancelled", item)
            elif item.deadline is not None and now > item.deadline:
                self._dropped("deadline", item)  # counted before the answer goes out
                _resolve(item.future, error=DeadlineExceeded(f"waited {now - item.deadline:.3f} s past the "
                                                             "request's deadline for a model pass"))
            else:
                kept.append(item)
        return kept

    def _dropped(self, reason: str, item: _Item) -> None:
        if self.on_drop:
            self.on_drop(reason, len(item.rows))

    def _run(self, batch: list[_Item]) -> None:
        rows = [row for item in batch for row in item.rows]
        started = time.monotonic()
        try:
            answers = self.runner(rows)
            if len(answers) != len(rows):
                raise RuntimeError(f"the runner answered {len(answers)} of {len(rows)} rows")
        except Exception as e:  # noqa: BLE001 - a bad row must fail its own request only
            if len(rows) == 1:
                _resolve(batch[0].future, error=e)
            else:
                log.warning("a pass of %d rows failed (%s: %s); retrying them one by one", len(rows),
                            type(e).__name__, e)
                for item in batch:
                    self._run_alone(item)
            return
        elapsed = time.monotonic() - started
        offset = 0
        for item in batch:
            _resolve(item.future, result=answers[offset:offset + len(item.rows)])
            offset += len(item.rows)
        if self.on_batch:
            self.on_batch(rows, elapsed)

    def _run_alone(self, item: _Item) -> None:
        """Answer one request row by row; the first row that fails fails the request."""
        answers = []
        for row in item.rows:
            try:
                answers.extend(self.runner([row]))
            except Exception as e:  # noqa: BLE001 - this request's own error
                _resolve(item.future, error=e)
                return
        _resolve(item.future, result=answers)


def _resolve(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Set a future's outcome once; a future already resolved (or cancelled) is left as it is."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
