"""validate_step keeps each passed report beside the content-addressed data and reuses it for the same bytes,
suite and thresholds; reuse=False (CACHE=0) and changed bytes validate again."""

from __future__ import annotations

import json

import pytest
from conftest import rte_rows, write_jsonl

from softprompt import validation
from softprompt.pipeline_steps import validate_step


def test_a_rerun_of_the_same_content_reuses_the_report(tmp_path, monkeypatch):
    data = tmp_path / "RTE"
    write_jsonl(data / "train.jsonl", rte_rows(40))
    write_jsonl(data / "val.jsonl", rte_rows(32, start=100))
    root = str(tmp_path / "validated")
    first = validate_step("rte", str(data), root, tmp_path / "r1", tmp_path / "w1")
    assert first["success"] and first["reused"] is False

    calls = []
    real = validation.validate
    monkeypatch.setattr(validation, "validate", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = validate_step("rte", str(data), root, tmp_path / "r2", tmp_path / "w2")
    assert calls == [] and again["reused"] is True  # no Great Expectations run
    assert {k: again[k] for k in ("fingerprint", "location", "files", "statistics")} == {
        k: first[k] for k in ("fingerprint", "location", "files", "statistics")}
    assert json.loads((tmp_path / "r2" / "validation.json").read_text())["reused"] is True
    assert (tmp_path / "r2" / "data_docs" / "index.html").is_file()

    forced = validate_step("rte", str(data), root, tmp_path / "r3", tmp_path / "w3", reuse=False)
    assert len(calls) == 1 and forced["reused"] is False

    write_jsonl(data / "train.jsonl", rte_rows(41))  # one more row: other bytes, another fingerprint
    changed = validate_step("rte", str(data), root, tmp_path / "r4", tmp_path / "w4")
    assert len(calls) == 2 and changed["reused"] is False and changed["fingerprint"] != first["fingerprint"]


def test_failed_validation_is_never_stored(tmp_path):
    from softprompt.errors import SoftpromptError

    data = tmp_path / "RTE"
    write_jsonl(data / "train.jsonl", [{**r, "label": "maybe"} if r["idx"] == 3 else r for r in rte_rows(40)])
    write_jsonl(data / "val.jsonl", rte_rows(32, start=100))
    root = tmp_path / "validated"
    for attempt in ("r1", "r2"):  # the second attempt validates again and fails again
        with pytest.raises(SoftpromptError, match="label_in_set"):
            validate_step("rte", str(data), str(root), tmp_path / attempt, tmp_path / f"w-{attempt}")
        assert json.loads((tmp_path / attempt / "validation.json").read_text())["success"] is False
    assert not list(root.rglob("reports"))
