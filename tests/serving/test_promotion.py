"""Promotions while serving: one task's failure is isolated, retried with backoff and counted by reason; a
broken helper pool is replaced; the last registry sync is a gauge."""

from __future__ import annotations

import os
import signal
import time

import pytest
from support.serving import add_version, make_registry

from softprompt.models import load_base
from softprompt.serving.server import PromptServer, ServeSettings
from softprompt.serving.source import RegistrySource


@pytest.fixture
def served(tmp_path):
    reg = make_registry(tmp_path, cb=4, rte=4)
    # no watch thread in the way: the tests call check_registry themselves
    settings = ServeSettings.load(port=0, poll_interval_s=3600, backoff_initial_s=30, backoff_max_s=100)
    server = PromptServer(load_base("tiny"), RegistrySource(str(reg["repo"])), settings, None)
    yield reg, server
    server.close()


def sample(server: PromptServer, name: str, **labels: str) -> float:
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_a_corrupt_promotion_is_isolated_to_its_task_and_retried_with_backoff(served, monkeypatch):
    """cb sorts before rte: before the fix cb's error escaped the loop and rte was never promoted."""
    reg, server = served
    real_fetch, calls = server.source.fetch, []

    def fetch(task, number):
        calls.append(task)
        if task == "cb":
            raise OSError(f"{task}: prompt.pt is truncated")
        return real_fetch(task, number)

    monkeypatch.setattr(server.source, "fetch", fetch)
    cb = add_version(reg, "cb", 11, 60.0)
    rte = add_version(reg, "rte", 12, 60.0)
    server.check_registry()
    assert server.snapshot.prompts["rte"].version == f"v{rte}"
    assert server.snapshot.prompts["cb"].version == "v1"  # the old one keeps serving
    assert sample(server, "softprompt_promotion_failures_total", task="cb", reason="io") == 1
    assert server.retries["cb"].at - time.monotonic() == pytest.approx(30, abs=5)
    server.check_registry()  # within the backoff: not tried again
    assert calls.count("cb") == 1
    server.retries["cb"].at = time.monotonic()  # the backoff has passed
    server.check_registry()  # tried again; the next wait doubles, up to backoff_max_s
    assert calls.count("cb") == 2 and server.retries["cb"].failures == 2
    assert server.retries["cb"].at - time.monotonic() == pytest.approx(60, abs=5)
    server.retries["cb"].at = time.monotonic()
    server.check_registry()
    assert server.retries["cb"].at - time.monotonic() == pytest.approx(100, abs=5)
    monkeypatch.setattr(server.source, "fetch", real_fetch)
    server.retries["cb"].at = time.monotonic()
    server.check_registry()
    assert server.snapshot.prompts["cb"].version == f"v{cb}" and "cb" not in server.retries


def test_the_last_sync_gauge_moves_with_each_check(served):
    _, server = served
    before = sample(server, "softprompt_registry_last_sync_timestamp_seconds")
    assert before > 0
    time.sleep(0.05)
    server.check_registry()
    after = sample(server, "softprompt_registry_last_sync_timestamp_seconds")
    assert before < after <= time.time()


def test_a_broken_helper_pool_is_replaced(served):
    reg, server = served
    source = server.source
    assert source.fetch("rte", 1).is_dir()  # the pool exists now
    for pid in list(source._worker._processes):  # the helper dies (OOM-killed, say)
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        source.fetch("rte", 1)
    assert source.fetch("rte", 1).is_dir()  # a new pool; before the fix every later pull failed
    number = add_version(reg, "rte", 21, 70.0)
    server.check_registry()
    assert server.snapshot.prompts["rte"].version == f"v{number}"


def test_a_broken_pool_counts_under_its_own_reason(served, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    reg, server = served

    def broken(task, number):
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(server.source, "fetch", broken)
    add_version(reg, "rte", 31, 70.0)
    server.check_registry()
    assert sample(server, "softprompt_promotion_failures_total", task="rte", reason="pool_broken") == 1
