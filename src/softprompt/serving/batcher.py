"""A dynamic micro-batcher: rows of concurrent requests, of any tasks, go through one model pass together.

Hand-written because no library here does it: KServe's and Ray Serve's batchers group requests per model, and
a task is one model there; here every task shares the model, so the batch is formed across tasks. One worker
thread owns the model: it waits for a first row, gathers more until `max_batch_size` rows or `max_wait_ms`
have passed, and runs them. torch releases the GIL, so the HTTP event loop keeps accepting meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

Runner = Callable[[list[Any]], list[Any]]
_Item = tuple[list[Any], Future]  # one request's rows and the future of their answers


class MicroBatcher:
    """Runs `runner(rows) -> answers` on batches of at most `max_batch_size` rows from concurrent submissions.

    A request is never split across passes (a request larger than `max_batch_size` runs alone), so all its rows
    are answered by the same prompt versions.
    """

    def __init__(self, runner: Runner, max_batch_size: int, max_wait_ms: float,
                 on_batch: Callable[[list[Any], float], None] | None = None) -> None:
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.runner, self.max_batch_size, self.max_wait = runner, max_batch_size, max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._carry: _Item | None = None  # a request that did not fit the last batch goes first in the next
        self._thread = threading.Thread(target=self._loop, name="softprompt-batcher", daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[Any]) -> Future:
        """A future of the answers to `rows`, in order."""
        future: Future = Future()
        self._queue.put((list(rows), future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """The first request, and more until the batch is full or the wait is over; True once closed."""
        batch, size, deadline = [first], len(first[0]), time.monotonic() + self.max_wait
        while size < self.max_batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            if size + len(item[0]) > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += len(item[0])
        return batch, False

    def _loop(self) -> None:
        closed = False
        while not closed or self._carry:
            first, self._carry = self._carry or self._queue.get(), None
            if first is None:
                return
            batch, closed = self._gather(first) if not closed else ([first], True)
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        rows = [row for item_rows, _ in batch for row in item_rows]
        started = time.monotonic()
        try:
            answers = self.runner(rows)
        except BaseException as e:  # noqa: BLE001 - the requests get the error; the batcher lives on
            for _, future in batch:
                future.set_exception(e)
            return
        elapsed = time.monotonic() - started
        offset = 0
        for item_rows, future in batch:
            future.set_result(answers[offset:offset + len(item_rows)])
            offset += len(item_rows)
        if self.on_batch:
            self.on_batch(rows, elapsed)
