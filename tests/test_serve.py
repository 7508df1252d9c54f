"""`softprompt serve`: a real registry (git + DVC), the tiny base, uvicorn on loopback, plain HTTP clients."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from support.registry import ENV, init_repo, make_prompt, metrics

from softprompt import registry
from softprompt.errors import SoftpromptError
from softprompt.serving.batcher import MicroBatcher
from softprompt.serving.engine import PromptSet, Row
from softprompt.serving.requests import input_fields
from softprompt.tasks import get_task

pytestmark = pytest.mark.server  # softprompt serve / uvicorn on loopback (not in make test-fast)

RTE = {"premise": "The cat sat on the mat.", "hypothesis": "A cat sat."}
CB = {"premise": "It rained all day, she said.", "hypothesis": "It rained."}


def add_version(reg: dict, task: str, seed: int, value: float, length: int = 4, edit=None) -> int:
    """Register (and, past the gate, promote) a new prompt version of `task`; returns its number."""
    prompt = make_prompt(reg["tmp"] / f"{task}-{seed}", task, seed, length=length)
    if edit:
        edit(prompt)
    return registry.register(reg["repo"], task, prompt, metrics(reg["tmp"], task, value), settings=reg["settings"],
                             policy="force").version


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("serve")
    out = {"tmp": tmp, "repo": init_repo(tmp / "repo"),
           "settings": registry.Settings(remote=str(tmp / "remote"), promotion_margin=0.5, lock_timeout=120)}
    add_version(out, "rte", 1, 50.0, length=4)
    add_version(out, "cb", 2, 50.0, length=6)  # prompts of different lengths share a batch
    return out


class Live:
    """A PromptServer behind uvicorn on a free loopback port, in this process."""

    def __init__(self, repo: Path, tasks: list[str] | None, **overrides) -> None:
        import uvicorn

        from softprompt.models import load_base
        from softprompt.serving.app import create_app
        from softprompt.serving.server import PromptServer, ServeSettings
        from softprompt.serving.source import RegistrySource

        settings = ServeSettings.load(**{"port": 0, "poll_interval_s": 0.2, **overrides})
        self.server = PromptServer(load_base("tiny"), RegistrySource(str(repo)), settings, tasks)
        self.uvicorn = uvicorn.Server(uvicorn.Config(create_app(self.server), host="127.0.0.1", port=0,
                                                     log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        while not self.uvicorn.started:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.uvicorn.servers[0].sockets[0].getsockname()[1]}"

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)
        self.server.close()


@pytest.fixture(scope="module")
def live(reg):
    server = Live(reg["repo"], ["rte", "cb"])
    yield server
    server.close()


def call(url: str, path: str, body=None, method: str | None = None, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict | str]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def v2_body(fields: dict, n: int = 1, mode: str | None = None) -> dict:
    body = {"id": "req-1", "inputs": [{"name": k, "shape": [n], "datatype": "BYTES", "data": [v] * n}
                                      for k, v in fields.items()]}
    if mode:
        body["parameters"] = {"mode": mode}
    return body


# ------------------------------------------------------------------------------------------------ routes


def test_health_and_model_routes(live):
    assert call(live.url, "/v2/health/live") == (200, {"live": True})
    assert call(live.url, "/v2/health/ready") == (200, {"ready": True})
    assert call(live.url, "/v2/models") == (200, {"models": ["cb", "rte"]})
    assert call(live.url, "/v1/models") == (200, {"models": ["cb", "rte"]})
    assert call(live.url, "/v2/models/rte/ready") == (200, {"name": "rte", "ready": True, "version": "v1"})
    assert call(live.url, "/v1/models/cb")[1]["ready"] is True
    status, meta = call(live.url, "/v2/models/cb")
    assert status == 200 and meta["versions"] == ["v1"] and meta["parameters"]["prompt_length"] == 6
    assert [i["name"] for i in meta["inputs"]] == ["premise", "hypothesis"]
    assert meta["parameters"]["labels"] == ["entailment", "contradiction", "neutral"]
    assert call(live.url, "/v2")[1]["name"] == "softprompt"


def test_v1_predict_generate_and_rank(live):
    status, out = call(live.url, "/v1/models/rte:predict", {"instances": [RTE, {**RTE, "premise": "Other."}]})
    assert status == 200 and len(out["predictions"]) == 2
    fingerprint = live.server.base.fingerprint
    for p in out["predictions"]:
        assert p["task"] == "rte" and p["version"] == "v1" and p["base_fingerprint"] == fingerprint
        assert isinstance(p["label"], str) and "scores" not in p
        assert p["class"] == (["entailment", "not_entailment"].index(p["label"]) if p["label"] in
                              ("entailment", "not_entailment") else None)
    status, out = call(live.url, "/v1/models/cb:predict", {"instances": [CB], "mode": "rank"})
    p = out["predictions"][0]
    assert status == 200 and set(p["scores"]) == {"entailment", "contradiction", "neutral"}
    assert p["label"] == max(p["scores"], key=p["scores"].get) and p["class"] == list(p["scores"]).index(p["label"])
    assert all(s < 0 for s in p["scores"].values())  # summed log-probabilities


def test_v2_infer_matches_v1(live):
    status, v2 = call(live.url, "/v2/models/cb/infer", v2_body(CB, n=2, mode="rank"))
    assert status == 200 and v2["model_name"] == "cb" and v2["model_version"] == "v1" and v2["id"] == "req-1"
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["scores"]["shape"] == [2, 3] and outputs["version"]["data"] == ["v1", "v1"]
    _, v1 = call(live.url, "/v1/models/cb:predict", {"instances": [CB], "mode": "rank"})
    expected = v1["predictions"][0]
    assert outputs["label"]["data"][0] == expected["label"] and outputs["class"]["data"][0] == expected["class"]
    assert outputs["scores"]["data"][:3] == pytest.approx(list(expected["scores"].values()), abs=1e-5)
    status, gen = call(live.url, "/v2/models/rte/infer", v2_body(RTE))
    assert status == 200 and {o["name"] for o in gen["outputs"]} == {"label", "class", "version"}
    assert gen["parameters"]["base_fingerprint"] == live.server.base.fingerprint


def test_metrics_count_requests_errors_batches_and_versions(live):
    call(live.url, "/v1/models/rte:predict", {"instances": [RTE]})
    call(live.url, "/v1/models/rte:predict", {"instances": [{"premise": "only"}]})
    status, text = call(live.url, "/metrics")
    assert status == 200
    assert re.search(r'softprompt_requests_total\{protocol="v1",status="200",task="rte"\} [1-9]', text)
    assert re.search(r'softprompt_request_errors_total\{status="400",task="rte"\} [1-9]', text)
    assert 'softprompt_prompt_loaded{task="rte",version="v1"} 1.0' in text
    assert 'softprompt_prompt_loaded{task="cb",version="v1"} 1.0' in text
    assert re.search(r"softprompt_batch_size_count [1-9]", text)
    assert re.search(r'softprompt_request_latency_seconds_bucket\{le="\+Inf",task="rte"\} [1-9]', text)
    assert "process_resident_memory_bytes" in text


# ------------------------------------------------------------------------------------------------ mixed batches


def test_mixed_task_batch_equals_each_row_alone(live):
    snapshot: PromptSet = live.server.snapshot
    rows = [Row("rte", {**RTE, "idx": 0, "label": None}, "rank"), Row("cb", {**CB, "idx": 0, "label": None}, "rank"),
            Row("rte", {"premise": "A much longer premise " * 5, "hypothesis": "h", "idx": 1, "label": None}, "rank"),
            Row("cb", {**CB, "idx": 1, "label": None}, "generate"), Row("rte", {**RTE, "idx": 2, "label": None},
                                                                         "generate")]
    mixed = snapshot.run(rows)
    for row, together in zip(rows, mixed):
        alone = snapshot.run([row])[0]
        assert together["label"] == alone["label"] and together["version"] == alone["version"]
        if row.mode == "rank":
            assert together["scores"].keys() == alone["scores"].keys()
            assert list(together["scores"].values()) == pytest.approx(list(alone["scores"].values()), abs=1e-5)


def test_concurrent_requests_of_two_tasks_share_passes(reg):
    server = Live(reg["repo"], ["rte", "cb"], max_wait_ms=200, max_batch_size=8)
    try:
        results = []
        threads = [threading.Thread(target=lambda t=t: results.append(
            call(server.url, f"/v1/models/{t}:predict", {"instances": [RTE if t == "rte" else CB] * 2})))
            for t in ("rte", "cb", "rte", "cb")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [s for s, _ in results] == [200] * 4
        # The batcher records a pass just after answering it: read /metrics once every pass (8 rows) is in.
        deadline = time.monotonic() + 10
        while True:
            text = call(server.url, "/metrics")[1]
            rows = float(re.search(r"softprompt_batch_size_sum (\S+)", text).group(1))
            if rows >= 8 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        count = float(re.search(r"softprompt_batch_tasks_count (\S+)", text).group(1))
        single = float(re.search(r'softprompt_batch_tasks_bucket\{le="1.0"\} (\S+)', text).group(1))
        assert single < count  # at least one pass held rows of both tasks
    finally:
        server.close()


def test_batcher_never_splits_a_request_and_keeps_order():
    seen: list[list[int]] = []

    def runner(rows):
        seen.append(list(rows))
        return [r * 10 for r in rows]

    batcher = MicroBatcher(runner, max_batch_size=4, max_wait_ms=100)
    try:
        futures = [batcher.submit(rows) for rows in ([1, 2, 3], [4, 5], [6], list(range(7)))]
        assert [f.result(timeout=10) for f in futures] == [[10, 20, 30], [40, 50], [60], [r * 10 for r in range(7)]]
    finally:
        batcher.close()
    assert all(len(b) <= 4 for b in seen if b != list(range(7)))
    assert [1, 2, 3] in [b[:3] for b in seen] and list(range(7)) in seen


def test_input_fields_come_from_each_task_formatter():
    assert input_fields(get_task("rte")) == ("premise", "hypothesis")
    assert input_fields(get_task("copa")) == ("premise", "choice1", "choice2", "question")
    assert input_fields(get_task("record")) == ("passage", "query", "entities")  # answers are targets only
    assert input_fields(get_task("squad")) == ("context", "question")


# ------------------------------------------------------------------------------------------------ bad requests

def j(obj) -> bytes:
    return json.dumps(obj).encode()


V1, V2 = "/v1/models/rte:predict", "/v2/models/rte/infer"
BAD = [
    ("POST", V1, b'{"instances": [', 400, "invalid JSON"),
    ("POST", V1, b"", 400, "empty"),
    ("POST", V1, b"\xff\xfe{}", 400, "not UTF-8"),
    ("POST", V1, b"[1, 2]", 400, "expected a JSON object"),
    ("POST", V1, j({"inputs": []}), 400, 'missing "instances"'),
    ("POST", V1, j({"instances": {"premise": "a"}}), 400, "expected a JSON list"),
    ("POST", V1, j({"instances": []}), 400, "empty"),
    ("POST", V1, j({"instances": ["text"]}), 400, "instances[0]: expected a JSON object"),
    ("POST", V1, j({"instances": [{"premise": "a"}]}), 400, "missing field 'hypothesis'"),
    ("POST", V1, j({"instances": [{**RTE, "premise": 3}]}), 400, "type (premise): a int, expected str"),
    ("POST", V1, j({"instances": [{**RTE, "premise": None}]}), 400, "not_null (premise)"),
    ("POST", V1, j({"instances": [{**RTE, "colour": "red"}]}), 400, "unknown field 'colour'"),
    ("POST", V1, j({"instances": [RTE], "mode": "beam"}), 400, "mode 'beam'"),
    ("POST", V1, j({"instances": [RTE], "extra": 1}), 400, "unknown key"),
    ("POST", "/v1/models/boolq:predict", j({"instances": [RTE]}), 404, "'boolq' is not served"),
    ("POST", V1, j({"instances": [RTE] * 65}), 413, "65 instances"),
    ("POST", V1, j({"instances": [{**RTE, "premise": "x" * 600}]}), 413, "input tokens"),
    ("POST", V1, b'{"instances": [{"premise": "' + b"y" * 1_100_000 + b'"}]}', 413, "serve.max_body_bytes"),
    ("POST", V1, b"[" * 100 + b"]" * 100, 400, "nested deeper"),
    ("POST", V2, j({"inputs": "premise"}), 400, "inputs: expected"),
    ("POST", V2, j({"inputs": [{"name": "premise", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}), 400,
     "data must be a list of 2"),
    ("POST", V2, j({"inputs": [{"name": "premise", "shape": [1], "datatype": "INT64", "data": [1]}]}), 400,
     "needs datatype BYTES"),
    ("POST", V2, j({"inputs": [{"name": "premise", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                               {"name": "hypothesis", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}), 400,
     "different numbers of instances"),
    ("POST", V2, j(v2_body(RTE) | {"parameters": []}), 400, "parameters: expected"),
    ("POST", V2, j({"inputs": [{"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}), 400,
     "unknown field 'colour'"),
    ("GET", V2, None, 405, "method not allowed"),
    ("GET", "/v3/anything", None, 404, "no such route"),
]


@pytest.mark.parametrize("method,path,raw,status,message", BAD, ids=[f"{i}-{b[4][:24]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(live, method, path, raw, status, message):
    got, body = call(live.url, path, method=method, raw=raw)
    assert got == status, body
    assert isinstance(body, dict) and message in body["error"], body


def test_an_oversized_body_gets_its_413_not_a_connection_reset(live):
    """urllib sends the whole body before it reads: the server must read past the limit, or the client gets RST."""
    big = b'{"instances": [{"premise": "' + b"y" * 3_000_000 + b'"}]}'
    for _ in range(5):
        status, body = call(live.url, V1, raw=big)
        assert status == 413 and "serve.max_body_bytes" in body["error"], body

    def chunks():  # no Content-Length: the limit is found while streaming
        for _ in range(40):
            yield b"z" * 65536

    request = urllib.request.Request(live.url + V1, data=chunks(), method="POST",
                                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=60)
    assert e.value.code == 413 and "serve.max_body_bytes" in json.loads(e.value.read())["error"]


def test_rank_on_a_task_without_labels_is_refused():
    from softprompt.serving.requests import RequestError, check_mode

    with pytest.raises(RequestError, match="no label strings") as e:
        check_mode(get_task("squad"), "rank", "mode")
    assert e.value.status == 400


def test_bad_requests_leave_the_server_serving(live):
    for method, path, raw, _, _ in BAD:
        call(live.url, path, method=method, raw=raw)
    status, out = call(live.url, "/v1/models/rte:predict", {"instances": [RTE]})
    assert status == 200 and out["predictions"][0]["version"] == live.server.snapshot.prompts["rte"].version
    assert "status=\"500\"" not in call(live.url, "/metrics")[1]


# ------------------------------------------------------------------------------------------------ promotion


def test_hot_promotion_under_load_fails_nothing(reg, live):
    stop, failures, seen = threading.Event(), [], []

    def client():
        while not stop.is_set():
            status, out = call(live.url, "/v1/models/rte:predict", {"instances": [RTE, RTE]})
            if status != 200:
                failures.append((status, out))
            else:
                seen.append(([p["version"] for p in out["predictions"]], time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        number = add_version(reg, "rte", 7, 60.0, length=5)
        promoted_at = time.monotonic()
        deadline = promoted_at + 30
        while time.monotonic() < deadline and not any(v == [f"v{number}"] * 2 for v, _ in seen[-3:]):
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    versions = [v for v, _ in seen]
    assert all(len(set(v)) == 1 for v in versions)  # one request, one version
    first_new = next(i for i, v in enumerate(versions) if v[0] == f"v{number}")
    assert all(v[0] == f"v{number}" for v in versions[first_new + 3:])  # (3 clients were in flight at the swap)
    assert call(live.url, "/v2/models/rte/ready")[1]["version"] == f"v{number}"
    assert f'softprompt_prompt_loaded{{task="rte",version="v{number}"}} 1.0' in call(live.url, "/metrics")[1]


def test_prompt_of_another_base_is_refused_and_the_old_version_keeps_serving(reg, live):
    def other_base(prompt: Path) -> None:
        meta = json.loads((prompt / "softprompt.json").read_text())
        meta.update(base_model="google/t5-base-lm-adapt", base_fingerprint="sha256:" + "0" * 64)
        (prompt / "softprompt.json").write_text(json.dumps(meta))

    number = add_version(reg, "cb", 9, 70.0, edit=other_base)
    deadline = time.monotonic() + 30
    pattern = re.compile(r'softprompt_prompt_refusals_total\{reason="base_mismatch",task="cb"\} 1.0')
    while time.monotonic() < deadline and not pattern.search(call(live.url, "/metrics")[1]):
        time.sleep(0.1)
    assert pattern.search(call(live.url, "/metrics")[1])
    assert live.server.refused["cb"] == number
    status, out = call(live.url, "/v1/models/cb:predict", {"instances": [CB]})
    assert status == 200 and out["predictions"][0]["version"] == "v1"


def test_startup_refuses_a_task_without_production_prompt(reg):
    with pytest.raises(SoftpromptError, match="boolq: no production prompt"):
        Live(reg["repo"], ["rte", "boolq"])


# ------------------------------------------------------------------------------------------------ the command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_softprompt_serve_command_answers_v1_and_v2_for_each_task(reg, tmp_path):
    # A rollback first: the refusal test above promoted a cb prompt of another base, which the command would
    # refuse to start with (exit 2, naming it).
    registry.promote(reg["repo"], "cb", 1, force=True, settings=reg["settings"])
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "softprompt.cli", "serve", "--model", "tiny", "--registry",
                             str(reg["repo"]), "--tasks", "rte,cb", "--host", "127.0.0.1", "--port", str(port)],
                            env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.monotonic() + 600, False  # generous: a loaded 2-core machine starts it slowly
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = call(url, "/v2/health/ready")[0] == 200
            except OSError:
                time.sleep(0.3)
        assert ready, f"not ready (exit {proc.poll()}): {(tmp_path / 'serve.log').read_text()[-2000:]}"
        for task, fields in (("rte", RTE), ("cb", CB)):
            status, v1 = call(url, f"/v1/models/{task}:predict", {"instances": [fields]})
            assert status == 200 and v1["predictions"][0]["task"] == task
            status, v2 = call(url, f"/v2/models/{task}/infer", v2_body(fields))
            assert status == 200 and v2["model_name"] == task
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    bad = subprocess.run([sys.executable, "-m", "softprompt.cli", "serve", "--model", "tiny", "--registry",
                          str(reg["repo"]), "--tasks", "rte,nosuch"], env=ENV, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task 'nosuch'" in bad.stderr


def test_mixed_prompt_lengths_pad_on_the_left():
    from softprompt.ensemble import PromptEnsemble
    from softprompt.models import load_base

    base = load_base("tiny")
    ens = PromptEnsemble(base.model, [torch.ones(2, 64), torch.ones(4, 64)])
    assert ens.prompt_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert ens.prompts[0, :2].abs().sum() == 0


# ------------------------------------------------------------------------------------------------ the manifest

SERVING = Path(__file__).resolve().parents[1] / "infra" / "serving"


def test_inference_service_is_generated_from_params():
    from softprompt.serving.manifest import manifest_yaml

    assert (SERVING / "inferenceservice.yaml").read_text() == manifest_yaml(), \
        "regenerate: python -m softprompt.serving.manifest > infra/serving/inferenceservice.yaml"
    kustomization = yaml.safe_load((SERVING / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["inferenceservice.yaml"]


def test_inference_service_pod_validates_against_the_kubernetes_schemas():
    import kubernetes_validate

    from softprompt.config import component_image, load_params

    doc = yaml.safe_load((SERVING / "inferenceservice.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = dict(doc["spec"]["predictor"])
    assert predictor.pop("minReplicas") >= 1
    # KServe's predictor is a PodSpec plus its own fields: validate that PodSpec with the Kubernetes schema.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "softprompt"},
                                  "spec": predictor}, "1.32.0", strict=True)
    params = load_params()
    container = predictor["containers"][0]
    assert container["image"] == component_image(params)
    assert container["command"] == ["softprompt", "serve"] and params["model"] in container["args"]
    accelerator = params["cluster"]["accelerators"][params["cluster"]["accelerator"]]
    assert predictor["nodeSelector"] == accelerator["node_selector"]
    assert container["resources"]["limits"] == {accelerator["resource"]: str(params["cluster"]["accelerator_count"])}
    assert predictor["tolerations"][0]["key"] == accelerator["taint"]["key"]
    secret = params["cluster"]["secrets"]["registry_git"]
    assert predictor["volumes"][0]["secret"]["secretName"] == secret["name"]
    assert container["volumeMounts"][0]["readOnly"] is True
    # the routes test_health_and_model_routes calls on a live server
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"][0]["containerPort"] == params["serve"]["port"]


def test_inference_service_without_accelerator_lands_on_the_cpu_pool():
    from softprompt.config import load_params
    from softprompt.serving.manifest import inference_service

    params = load_params("smoke")
    predictor = inference_service(params)["spec"]["predictor"]
    assert predictor["nodeSelector"] == params["cluster"]["cpu_pool"]["node_selector"]
    assert "tolerations" not in predictor and "limits" not in predictor["containers"][0]["resources"]


def test_the_server_fixes_glibcs_mmap_threshold():
    """On glibc, freed batch activations go back to the OS (benchmarks/serving.py measures the RSS it saves)."""
    import platform

    from softprompt.serving import return_freed_tensors_to_the_os

    assert return_freed_tensors_to_the_os() is (platform.libc_ver()[0] == "glibc")
