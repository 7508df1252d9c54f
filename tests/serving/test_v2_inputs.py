"""Inputs and Open Inference Protocol conformance: per-task input limits, generation budgets, versioned routes,
the outputs filter, nested data, datatypes, the binary extension, request ids."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
from support.serving import CB, RTE, add_version, call, edit_meta, make_registry, start

from softprompt.serving.engine import Row
from softprompt.serving.requests import RequestError, v2_instances
from softprompt.tasks import get_task

CB_SOURCE_LENGTH = 100  # CB below is 64 tokens of the tiny (byte-level) vocabulary, the long one 210


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    reg = make_registry(tmp_path_factory.mktemp("v2"), rte=4)
    add_version(reg, "cb", 5, 50.0, length=6, edit=lambda p: edit_meta(p, max_source_length=CB_SOURCE_LENGTH))
    add_version(reg, "squad", 6, 50.0, length=5)  # a QA budget beside rte's short labels
    server = start(reg["repo"], ["rte", "cb", "squad"])
    yield server
    server.close()


def v2(fields: dict, n: int = 1, **extra) -> dict:
    return {"inputs": [{"name": k, "shape": [n], "datatype": "BYTES", "data": [v] * n} for k, v in fields.items()],
            **extra}


# ------------------------------------------------------------------------------------------------ inputs


def test_an_input_longer_than_the_prompts_training_length_is_refused_not_truncated(live):
    long_cb = {**CB, "premise": "It rained all day and all night over the hills, she said. " * 3}
    count = live.server.snapshot.count_tokens(Row("cb", {**long_cb, "idx": 0, "label": None}))
    assert CB_SOURCE_LENGTH < count <= 512  # under the server's limit: before the fix it was cut silently
    status, body, _ = call(live.url, "/v1/models/cb:predict", {"instances": [long_cb]})
    assert status == 413, body
    assert f"{count} input tokens, more than cb's limit of {CB_SOURCE_LENGTH}" in body["error"]
    assert "max_source_length" in body["error"]
    meta = call(live.url, "/v2/models/cb")[1]
    assert meta["parameters"]["max_input_tokens"] == CB_SOURCE_LENGTH
    assert call(live.url, "/v2/models/rte")[1]["parameters"]["max_input_tokens"] == 512
    assert call(live.url, "/v1/models/cb:predict", {"instances": [CB]})[0] == 200


def test_rows_are_decoded_to_their_own_tasks_budget(live, monkeypatch):
    """A short-label row sharing a pass with a QA row must not decode to the QA budget."""
    snapshot = live.server.snapshot
    budgets = {t: snapshot.prompts[t].budget for t in ("rte", "squad")}
    assert budgets["rte"] < budgets["squad"]
    seen = []
    real_generate = snapshot.ensemble.generate

    def generate(ids, mask, **kwargs):
        seen.append((len(ids), kwargs["max_new_tokens"]))
        return real_generate(ids, mask, **kwargs)

    monkeypatch.setattr(snapshot.ensemble, "generate", generate)
    rows = [Row("rte", {**RTE, "idx": 0, "label": None}),
            Row("squad", {"context": "Paris is in France.", "question": "Where is Paris?", "id": "q",
                          "answer": "", "answers": []}),
            Row("rte", {**RTE, "idx": 1, "label": None})]
    answers = snapshot.run(rows)
    assert [a["task"] for a in answers] == ["rte", "squad", "rte"]
    assert sorted(seen) == sorted([(2, budgets["rte"]), (1, budgets["squad"])])


# ------------------------------------------------------------------------------------------------ V2


def test_versioned_routes(live):
    status, out, _ = call(live.url, "/v2/models/rte/versions/v1/infer", v2(RTE))
    assert status == 200 and out["model_version"] == "v1"
    assert call(live.url, "/v2/models/rte/versions/v1")[1]["versions"] == ["v1"]
    assert call(live.url, "/v2/models/rte/versions/v1/ready")[:2] == (200, {"name": "rte", "ready": True,
                                                                            "version": "v1"})
    status, body, _ = call(live.url, "/v2/models/rte/versions/v9/infer", v2(RTE))
    assert status == 404 and "version 'v9' is not served; rte serves v1" in body["error"]
    assert call(live.url, "/v2/models/rte/versions/v9/ready")[0] == 404


def test_the_outputs_filter(live):
    status, out, _ = call(live.url, "/v2/models/rte/infer", v2(RTE, outputs=[{"name": "label"}]))
    assert status == 200 and [o["name"] for o in out["outputs"]] == ["label"]
    status, body, _ = call(live.url, "/v2/models/rte/infer", v2(RTE, outputs=[{"name": "logits"}]))
    assert status == 400 and "outputs[0]: unknown output 'logits'" in body["error"]


def test_nested_and_flat_data_are_the_same_request(live):
    nested = {"inputs": [{"name": k, "shape": [2, 1], "datatype": "BYTES", "data": [[v], [v]]}
                         for k, v in RTE.items()]}
    status, out, _ = call(live.url, "/v2/models/rte/infer", nested)
    flat = call(live.url, "/v2/models/rte/infer", {"inputs": [{**t, "data": [t["data"][0][0]] * 2}
                                                              for t in nested["inputs"]]})[1]
    assert status == 200 and out["outputs"][0] == flat["outputs"][0] and out["outputs"][0]["shape"] == [2]


def test_every_input_has_a_protocol_datatype_record_entities_included():
    from softprompt.serving.app import input_metadata
    from softprompt.serving.requests import input_fields

    record = get_task("record")
    meta = {name: input_metadata(record, name) for name in input_fields(record)}
    assert meta["entities"] == {"name": "entities", "datatype": "BYTES", "shape": [-1],
                                "parameters": {"content_type": "json"}}
    valid = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16"}
    for name in ("rte", "wsc", "record", "copa", "wic", "multirc", "squad"):
        task = get_task(name)
        assert all(input_metadata(task, n)["datatype"] in valid for n in input_fields(task)), name


def test_a_list_field_travels_as_json_text_in_bytes():
    from softprompt.serving.requests import Limits

    record = get_task("record")
    body = {"inputs": [{"name": "passage", "shape": [1], "datatype": "BYTES", "data": ["Paris is in France."]},
                       {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["@placeholder is a city"]},
                       {"name": "entities", "shape": [1], "datatype": "BYTES", "data": ['["Paris", "France"]']}]}
    rows = v2_instances(record, body, Limits(10**6, 64, 512))
    assert rows[0]["entities"] == ["Paris", "France"]
    body["inputs"][2]["data"] = ["Paris"]
    with pytest.raises(RequestError, match=r"inputs\[2\].data\[0\]: field 'entities' is a list: send each element "
                                           "as JSON text"):
        v2_instances(record, body, Limits(10**6, 64, 512))


@pytest.mark.parametrize("datatype", ["FP16", "BF16", "FP32", "FP64"])
def test_every_float_datatype_is_accepted_where_a_float_is(datatype):
    from softprompt.serving.requests import _v2_tensor

    task = SimpleNamespace(name="t", fields={"weight": "float"})
    assert _v2_tensor(task, {"name": "weight", "shape": [2], "datatype": datatype, "data": [0.5, 1.0]},
                      "inputs[0]") == ("weight", [0.5, 1.0])


def test_binary_tensors_get_a_clear_400(live):
    status, body, _ = call(live.url, "/v2/models/rte/infer", raw=b"\x00\x01binary",
                           headers={"Inference-Header-Content-Length": "40"})
    assert status == 400 and "binary tensor extension is not supported" in body["error"]
    asks_binary = v2(RTE)
    asks_binary["inputs"][0]["parameters"] = {"binary_data_size": 12}
    status, body, _ = call(live.url, "/v2/models/rte/infer", asks_binary)
    assert status == 400 and "inputs[0]: the binary tensor extension is not supported" in body["error"]
    status, body, _ = call(live.url, "/v2/models/rte/infer",
                           v2(RTE, outputs=[{"name": "label", "parameters": {"binary_data": True}}]))
    assert status == 400 and "outputs: the binary tensor extension" in body["error"]


def test_request_ids_are_taken_or_made_echoed_and_logged(live, caplog):
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with caplog.at_level(logging.INFO, logger="softprompt.access"):
        status, _, headers = call(live.url, "/v1/models/rte:predict", {"instances": [RTE]},
                                  headers={"X-Request-ID": "client-42", "traceparent": parent})
        deadline = time.monotonic() + 10  # the line is written once the response is sent: the client may be first
        while time.monotonic() < deadline and not any("request_id=client-42" in r.getMessage()
                                                      for r in caplog.records):
            time.sleep(0.05)
    assert status == 200 and headers["x-request-id"] == "client-42" and headers["traceparent"] == parent
    assert any("request_id=client-42" in r.getMessage() and "trace_id=4bf92f3577b34da6a3ce929d0e0e4736" in
               r.getMessage() and '"POST /v1/models/rte:predict" 200' in r.getMessage() for r in caplog.records)
    _, _, made = call(live.url, "/v2/health/live", headers={"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"})
    assert len(made["x-request-id"]) == 32 and made["traceparent"].startswith("00-")
    assert made["traceparent"] != "00-" + "0" * 32 + "-" + "0" * 16 + "-01"  # an invalid one is replaced
    _, _, other = call(live.url, "/v2/health/live")
    assert other["x-request-id"] != made["x-request-id"]
