"""Overload and lifecycle over HTTP: bounded queue (503 + Retry-After), deadlines, clients that leave, a
server that binds before it loads, liveness from the batcher, and a SIGTERM drain."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time

import pytest
from support.serving import CB, RTE, Gate, Live, call, make_registry, start

PREDICT = "/v1/models/rte:predict"


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> dict:
    return make_registry(tmp_path_factory.mktemp("overload"), rte=4, cb=6)


@pytest.fixture
def live(reg):
    server = start(reg["repo"], ["rte", "cb"], max_queue_rows=4, max_batch_size=2, max_wait_ms=0,
                   request_timeout_s=30, drain_delay_s=0.5, drain_grace_s=10)
    gate = Gate(server.server.batcher)
    yield server, gate
    gate.restore()
    server.close()


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def metric(url: str, pattern: str) -> float:
    found = re.search("^" + pattern, call(url, "/metrics")[1], re.M)
    return float(found.group(1)) if found else 0.0


def test_a_full_queue_answers_503_with_retry_after(live):
    server, gate = live
    gate.hold()
    running, _ = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
    assert gate.entered.wait(10)  # that row is in a pass, held
    queued, answers = in_thread(call, server.url, PREDICT, {"instances": [RTE] * 4})
    wait_for(lambda: server.server.batcher.queued_rows == 4)
    assert metric(server.url, r"softprompt_queue_rows (\S+)") == 4
    status, body, headers = call(server.url, PREDICT, {"instances": [CB]})
    assert status == 503 and "overloaded" in body["error"] and int(headers["retry-after"]) >= 1
    gate.release()
    running.join(30)
    queued.join(30)
    assert answers[0][0] == 200 and len(answers[0][1]["predictions"]) == 4
    assert call(server.url, PREDICT, {"instances": [RTE]})[0] == 200  # room again


def test_a_request_past_its_deadline_is_dropped_with_503(reg):
    server = start(reg["repo"], ["rte"], max_batch_size=1, max_wait_ms=0, request_timeout_s=0.3)
    gate = Gate(server.server.batcher)
    try:
        gate.hold()
        first, _ = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
        assert gate.entered.wait(10)
        late, answers = in_thread(call, server.url, PREDICT, {"instances": [{**RTE, "premise": "late"}]})
        time.sleep(0.6)
        gate.release()
        first.join(30)
        late.join(30)
        status, body, headers = answers[0]
        assert status == 503 and "serve.request_timeout_s" in body["error"] and "retry-after" in headers
        assert not any(r.fields["premise"] == "late" for r in gate.rows)  # never computed
        assert metric(server.url, r'softprompt_dropped_rows_total\{reason="deadline"\} (\S+)') == 1
    finally:
        gate.restore()
        server.close()


def test_a_client_that_disconnects_is_not_computed(live):
    server, gate = live
    gate.hold()
    running, _ = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
    assert gate.entered.wait(10)
    body = b'{"instances": [{"premise": "gone", "hypothesis": "h"}]}'
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: server.server.batcher.queued_rows == 1)
    # the socket is closed: the handler notices and cancels the queued rows, which free their room at once
    wait_for(lambda: server.server.batcher.queued_rows == 0)
    gate.release()
    running.join(30)
    assert call(server.url, PREDICT, {"instances": [RTE]})[0] == 200
    assert not any(r.fields["premise"] == "gone" for r in gate.rows)
    assert metric(server.url, r'softprompt_dropped_rows_total\{reason="cancelled"\} (\S+)') == 1


def test_tokenizing_runs_off_the_event_loop(live):
    """A request waiting for the tokenizer (held by the batcher) must not stall other connections."""
    server, _ = live
    lock = server.server.snapshot.lock
    lock.acquire()
    try:
        waiting, answers = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
        time.sleep(0.3)
        started = time.monotonic()
        assert call(server.url, "/v2/health/live", timeout=5)[0] == 200
        assert time.monotonic() - started < 2
    finally:
        lock.release()
    waiting.join(30)
    assert answers[0][0] == 200


def test_liveness_follows_the_batcher_heartbeat(reg):
    server = start(reg["repo"], ["rte"], max_batch_size=1, max_wait_ms=0, liveness_stall_s=0.5)
    gate = Gate(server.server.batcher)
    try:
        assert call(server.url, "/v2/health/live")[:2] == (200, {"live": True})
        gate.hold()
        stuck, _ = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
        assert gate.entered.wait(10)
        time.sleep(0.8)
        assert call(server.url, "/v2/health/live")[:2] == (503, {"live": False})
        gate.release()
        stuck.join(30)
        wait_for(lambda: call(server.url, "/v2/health/live")[0] == 200)
    finally:
        gate.restore()
        server.close()


def test_the_port_binds_before_loading_and_readiness_waits_for_it(reg):
    from softprompt.models import load_base
    from softprompt.serving.server import PromptServer, ServeSettings, Service
    from softprompt.serving.source import RegistrySource

    settings = ServeSettings.load(port=0)
    loaded = threading.Event()
    service = Service(settings)

    def build(metrics):
        loaded.wait(30)  # a large base, still loading
        return PromptServer(load_base("tiny"), RegistrySource(str(reg["repo"])), settings, ["rte"], metrics=metrics)

    service.load(build, on_failure=lambda e: None)
    server = Live(service)
    try:
        assert call(server.url, "/v2/health/live")[:2] == (200, {"live": True})
        assert call(server.url, "/v2/health/ready")[:2] == (503, {"ready": False})
        status, body, headers = call(server.url, PREDICT, {"instances": [RTE]})
        assert status == 503 and "loading" in body["error"] and headers["retry-after"] == "5"
        assert call(server.url, "/v2/models")[0] == 503
        loaded.set()
        wait_for(lambda: call(server.url, "/v2/health/ready")[0] == 200, timeout=60)
        assert call(server.url, PREDICT, {"instances": [RTE]})[0] == 200
    finally:
        loaded.set()
        server.close()


def test_a_load_that_fails_is_reported_and_not_live(reg):
    from softprompt.errors import SoftpromptError
    from softprompt.serving.server import ServeSettings, Service

    service, failures = Service(ServeSettings.load(port=0)), []

    def build(metrics):
        raise SoftpromptError("boolq: no production prompt")

    service.load(build, on_failure=failures.append).join(10)
    assert service.state == "failed" and not service.live and not service.ready
    assert [str(e) for e in failures] == ["boolq: no production prompt"]


def test_sigterm_turns_readiness_off_then_drains_in_flight_requests(live):
    server, gate = live
    gate.hold()
    in_flight, answers = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
    assert gate.entered.wait(10)
    server.http.handle_exit(signal.SIGTERM, None)
    assert call(server.url, "/v2/health/ready")[:2] == (503, {"ready": False})  # still answering, not ready
    assert call(server.url, "/v2/health/live")[0] == 200
    time.sleep(0.6)  # past drain_delay_s: uvicorn stops accepting, waits for the request in flight
    gate.release()
    in_flight.join(30)
    assert answers[0][0] == 200 and answers[0][1]["predictions"][0]["task"] == "rte"
    server.thread.join(30)
    assert not server.thread.is_alive()
    with pytest.raises(OSError):
        call(server.url, "/v2/health/live", timeout=2)


def test_serve_binds_then_exits_with_the_load_error(reg):
    """`softprompt serve` binds first; a load that fails stops it with the error (exit 2 from the CLI)."""
    from softprompt.errors import SoftpromptError
    from softprompt.serving import serve

    with pytest.raises(SoftpromptError, match="boolq: no production prompt"):
        serve("tiny", str(reg["repo"]), "boolq", host="127.0.0.1", port=0)


def test_a_versioned_request_answered_after_a_swap_is_not_passed_off_as_its_version(reg, live):
    """The version is checked when the request arrives; a promotion can land before its pass."""
    from support.serving import add_version

    server, gate = live
    gate.hold()
    body = {"inputs": [{"name": k, "shape": [1], "datatype": "BYTES", "data": [v]} for k, v in CB.items()]}
    pinned, answers = in_thread(call, server.url, "/v2/models/cb/versions/v1/infer", body)
    assert gate.entered.wait(10)  # held in its pass, which read the v1 snapshot: wait for the next one instead
    gate.release()
    pinned.join(30)
    assert answers[0][0] == 200 and answers[0][1]["model_version"] == "v1"
    gate.hold()
    blocker, _ = in_thread(call, server.url, PREDICT, {"instances": [RTE]})
    assert gate.entered.wait(10)
    pinned, answers = in_thread(call, server.url, "/v2/models/cb/versions/v1/infer", body)
    wait_for(lambda: server.server.batcher.queued_rows == 1)
    number = add_version(reg, "cb", 41, 90.0, length=6)
    server.server.check_registry()  # the swap, while the pinned request waits for its pass
    gate.release()
    blocker.join(30)
    pinned.join(30)
    status, out, _ = answers[0]
    if status == 200:  # the worker took it into a forming batch, with the v1 snapshot, before the swap landed
        assert out["model_version"] == "v1"  # answered by v1, not passed off
    else:
        assert status == 404 and f"was replaced by v{number}" in out["error"]
