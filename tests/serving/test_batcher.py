"""The micro-batcher under cancellation, failure, overload and deadlines (no model: a runner that records)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from softprompt.serving.batcher import DeadlineExceeded, MicroBatcher, QueueFull


class SlowRunner:
    """Answers each row with row * 10 after `delay` seconds; a row equal to `bad` raises."""

    def __init__(self, delay: float = 0.0, bad: int | None = None) -> None:
        self.delay, self.bad, self.passes = delay, bad, []
        self.started = threading.Event()

    def __call__(self, rows):
        self.passes.append(list(rows))
        self.started.set()
        time.sleep(self.delay)
        if self.bad in rows:
            raise ValueError(f"row {self.bad} is bad")
        return [r * 10 for r in rows]


@pytest.fixture
def closing():
    made = []
    yield made.append
    for batcher in made:
        batcher.close(timeout=5)


def test_cancelling_requests_mid_batch_100_times_then_100_more_are_served(closing):
    """The review's reproduction, scripted: cancel asyncio-wrapped futures (as the HTTP handler awaits them)
    while their pass runs, 100 times; the next 100 requests must all be answered. Before the fix the first
    cancellation killed the worker thread (InvalidStateError from set_result) and every later request hung."""
    runner = SlowRunner(delay=0.004)
    batcher = MicroBatcher(runner, max_batch_size=8, max_wait_ms=1)
    closing(batcher)

    async def cancel_mid_batch() -> None:
        runner.started.clear()
        kept = asyncio.wrap_future(batcher.submit([1]))
        doomed = asyncio.wrap_future(batcher.submit([2, 3]))
        await asyncio.get_running_loop().run_in_executor(None, runner.started.wait, 5)
        doomed.cancel()  # mid-pass: passed on to the batcher's future
        assert await asyncio.wait_for(kept, 5) == [10]

    async def script() -> list:
        for _ in range(100):
            await cancel_mid_batch()
        return await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(batcher.submit([i]))
                                                       for i in range(100))), 10)

    answers = asyncio.run(script())
    assert answers == [[i * 10] for i in range(100)]
    assert batcher.alive(stall_s=5)


def test_a_request_cancelled_before_its_pass_is_not_computed(closing):
    gate = threading.Event()
    runner = SlowRunner()
    batcher = MicroBatcher(lambda rows: (gate.wait(5), runner(rows))[1], max_batch_size=1, max_wait_ms=0)
    closing(batcher)
    first = batcher.submit([1])
    cancelled = batcher.submit([99])
    assert cancelled.cancel()
    gate.set()
    assert first.result(timeout=5) == [10] and batcher.submit([2]).result(timeout=5) == [20]
    assert [99] not in runner.passes


def test_a_failing_row_fails_only_its_own_request(closing):
    runner = SlowRunner(bad=7)
    batcher = MicroBatcher(runner, max_batch_size=8, max_wait_ms=200)
    closing(batcher)
    good, bad, other = batcher.submit([1, 2]), batcher.submit([3, 7]), batcher.submit([4])
    assert good.result(timeout=5) == [10, 20] and other.result(timeout=5) == [40]
    with pytest.raises(ValueError, match="row 7 is bad"):
        bad.result(timeout=5)
    assert [1, 2, 3, 7, 4] in runner.passes  # one pass first, then row by row


def test_a_turn_that_raises_outside_the_runner_leaves_the_worker_alive(closing):
    calls = []

    def on_batch(rows, seconds):
        calls.append(rows)
        if len(calls) == 1:
            raise RuntimeError("metrics backend down")

    batcher = MicroBatcher(SlowRunner(), max_batch_size=4, max_wait_ms=0, on_batch=on_batch)
    closing(batcher)
    assert batcher.submit([1]).result(timeout=5) == [10]
    assert batcher.submit([2]).result(timeout=5) == [20]
    assert batcher.alive(stall_s=5)


def test_the_queue_is_bounded_in_rows(closing):
    gate = threading.Event()
    batcher = MicroBatcher(lambda rows: (gate.wait(5), [r for r in rows])[1], max_batch_size=2, max_wait_ms=0,
                           max_queue_rows=4)
    closing(batcher)
    running = batcher.submit([0, 0])  # taken into a pass: no longer queued
    time.sleep(0.2)
    queued = [batcher.submit([1, 1]), batcher.submit([2, 2])]
    assert batcher.queued_rows == 4
    with pytest.raises(QueueFull, match="4 rows queued; 1 more would pass the limit of 4"):
        batcher.submit([3])
    gate.set()
    assert running.result(timeout=5) == [0, 0] and [f.result(timeout=5) for f in queued] == [[1, 1], [2, 2]]
    assert batcher.queued_rows == 0 and batcher.submit([5]).result(timeout=5) == [5]


def test_rows_taken_into_a_forming_batch_no_longer_count_as_queued(closing):
    """Found by the benchmark: answers go out, clients send again at once, and were refused (503) because the
    rows the worker had already taken for its next batch still counted against the bound."""
    batcher = MicroBatcher(SlowRunner(), max_batch_size=4, max_wait_ms=400, max_queue_rows=2)
    closing(batcher)
    first = batcher.submit([1, 2])  # taken at once; the worker then waits up to 400 ms for more rows
    time.sleep(0.1)
    second = batcher.submit([3, 4])  # fits: the queue holds nothing
    assert first.result(timeout=5) == [10, 20] and second.result(timeout=5) == [30, 40]


def test_an_oversized_request_is_admitted_into_an_empty_queue(closing):
    batcher = MicroBatcher(SlowRunner(), max_batch_size=2, max_wait_ms=0, max_queue_rows=2)
    closing(batcher)
    assert batcher.submit([1, 2, 3]).result(timeout=5) == [10, 20, 30]


def test_rows_past_their_deadline_are_dropped_before_a_pass(closing):
    gate = threading.Event()
    runner = SlowRunner()
    dropped = []
    batcher = MicroBatcher(lambda rows: (gate.wait(5), runner(rows))[1], max_batch_size=1, max_wait_ms=0,
                           on_drop=lambda reason, n: dropped.append((reason, n)))
    closing(batcher)
    first = batcher.submit([1])
    late = batcher.submit([5, 6], deadline=time.monotonic() + 0.05)
    time.sleep(0.2)
    gate.set()
    assert first.result(timeout=5) == [10]
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=5)
    assert [5, 6] not in runner.passes and dropped == [("deadline", 2)]


def test_close_serves_what_is_queued_then_refuses(closing):
    batcher = MicroBatcher(SlowRunner(delay=0.01), max_batch_size=2, max_wait_ms=0)
    futures = [batcher.submit([i]) for i in range(6)]
    batcher.close()
    assert [f.result(timeout=0) for f in futures] == [[i * 10] for i in range(6)]
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit([1])
    assert not batcher.alive(stall_s=5)


def test_liveness_is_the_worker_heartbeat(closing):
    gate = threading.Event()
    batcher = MicroBatcher(lambda rows: (gate.wait(5), rows)[1], max_batch_size=1, max_wait_ms=0)
    closing(batcher)
    assert batcher.alive(stall_s=2)
    future = batcher.submit([1])
    time.sleep(0.5)
    assert not batcher.alive(stall_s=0.3)  # stuck in one pass for longer than the stall limit
    gate.set()
    future.result(timeout=5)
    time.sleep(0.1)
    assert batcher.alive(stall_s=0.3)
