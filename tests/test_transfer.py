"""Domain transfer: label mapping and a tiny end-to-end QQP -> MRPC run."""

from __future__ import annotations

import json

import pytest

from softprompt.device import choose_placement
from softprompt.errors import SoftpromptError
from softprompt.tasks import get_task
from softprompt.transfer import label_map, map_predictions, run_transfer


def test_label_maps_between_paraphrase_tasks():
    to_mrpc = label_map(get_task("qqp"), get_task("mrpc"))
    assert map_predictions(["duplicate", "not_duplicate", "banana"], to_mrpc) == [
        "equivalent", "not_equivalent", "banana"]
    assert map_predictions(["equivalent"], label_map(get_task("mrpc"), get_task("qqp"))) == ["duplicate"]
    assert label_map(get_task("squad"), get_task("bioasq")) == {}
    with pytest.raises(SoftpromptError, match="cannot transfer rte -> mrpc"):
        label_map(get_task("rte"), get_task("mrpc"))


def test_transfer_qqp_prompt_to_mrpc(tmp_path):
    from softprompt.config import PromptConfig
    from softprompt.models import load_base
    from softprompt.prompt import attach_prompt, save_prompt

    base = load_base("tiny")
    peft = attach_prompt(base, PromptConfig(length=2, init="random"), None, seed=0)
    save_prompt(peft, tmp_path / "p", {"task": "qqp", "base_model": "tiny", "base_fingerprint": base.fingerprint,
                                       "prompt_length": 2, "train": {"max_source_length": 64}})
    (tmp_path / "qqp").mkdir()
    (tmp_path / "qqp" / "dev.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                                              "1\t1\t2\tWhy?\tHow?\t1\n2\t3\t4\tA?\tB?\t0\n")
    (tmp_path / "mrpc").mkdir()
    (tmp_path / "mrpc" / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                               "1\t1\t2\tA b.\tA b!\n0\t3\t4\tC.\tD.\n1\t5\t6\tE.\tE!\n")
    report = run_transfer(tmp_path / "p", "qqp", [("mrpc", tmp_path / "mrpc")], tmp_path / "out",
                          source_data=tmp_path / "qqp", mode="rank", batch_size=4, progress=False)
    assert report["source"]["task"] == "qqp" and report["source"]["metrics"]["num_examples"] == 2
    assert {k: report[k] for k in ("device", "dtype")} == choose_placement().to_json()  # where it ran (auto)
    (target,) = report["targets"]
    assert target["task"] == "mrpc" and target["metrics"]["num_examples"] == 3
    rows = [json.loads(x) for x in (tmp_path / "out" / "target-mrpc.predictions.jsonl").read_text().splitlines()]
    assert {r["output"] for r in rows} <= {"duplicate", "not_duplicate"}
    assert all(r["prediction"] == r["output"].replace("duplicate", "equivalent") for r in rows)
    hits = sum(r["prediction"] == r["targets"] for r in rows)
    assert target["metrics"]["accuracy"] == pytest.approx(100 * hits / 3)
    assert "| mrpc | target | 3 |" in (tmp_path / "out" / "transfer.md").read_text()


def test_transfer_refuses_wrong_source_task(tmp_path):
    from softprompt.config import PromptConfig
    from softprompt.models import load_base
    from softprompt.prompt import attach_prompt, save_prompt

    base = load_base("tiny")
    peft = attach_prompt(base, PromptConfig(length=2, init="random"), None, seed=0)
    save_prompt(peft, tmp_path / "p", {"task": "qqp", "base_model": "tiny", "base_fingerprint": base.fingerprint,
                                       "prompt_length": 2})
    with pytest.raises(SoftpromptError, match="trained on 'qqp', not 'mrpc'"):
        run_transfer(tmp_path / "p", "mrpc", [("qqp", None)], tmp_path / "out")
