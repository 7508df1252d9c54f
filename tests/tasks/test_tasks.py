"""Task formatters on hand-written rows in the official layouts, checked against T5's strings."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from softprompt.errors import SoftpromptError
from softprompt.tasks import TASKS, get_task, load_examples, load_rows
from softprompt.tasks.loading import preview_rows

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fmt(task: str, row: dict, taskless: bool = False):
    return get_task(task, taskless=taskless).format(row)


def test_rte_glue_sorted_keys_and_taskless():
    row = {"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": "entailment", "idx": 3}
    (ex,) = fmt("rte", row)
    assert ex.inputs == "rte hypothesis: An animal sat. premise: A cat sat."
    assert ex.targets == "entailment" and ex.idx == 3
    assert fmt("rte", row, taskless=True)[0].inputs == "hypothesis: An animal sat. premise: A cat sat."
    assert fmt("rte", {**row, "label": 1})[0].targets == "not_entailment"


def test_boolq_cb_copa_wic_strings():
    boolq = {"question": "is it?", "passage": "It is.", "idx": 0, "label": True}
    assert fmt("boolq", boolq)[0].inputs == "boolq passage: It is. question: is it?"
    assert fmt("boolq", boolq)[0].targets == "True"
    cb = {"premise": "P.", "hypothesis": "H", "label": "neutral", "idx": 1}
    assert fmt("cb", cb)[0].inputs == "cb hypothesis: H premise: P." and fmt("cb", cb)[0].targets == "neutral"
    copa = {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.", "choice2": "Water flowed.",
            "question": "effect", "label": 1, "idx": 0, "extra": "ignored"}
    (ex,) = fmt("copa", copa)
    assert ex.inputs == ("copa choice1: The toilet filled. choice2: Water flowed. premise: The man turned on the "
                         "faucet. question: effect")
    assert ex.targets == "choice2"
    wic = {"word": "class", "sentence1": "A class.", "sentence2": "Real class.", "idx": 0, "label": False,
           "start1": 2, "start2": 5, "end1": 7, "end2": 10, "version": 1.1}
    assert fmt("wic", wic)[0].inputs == "wic sentence1: A class. sentence2: Real class. word: class"
    assert fmt("wic", wic)[0].targets == "False"


def test_unlabeled_row_targets_unk_and_bad_label_errors():
    assert fmt("rte", {"premise": "p", "hypothesis": "h", "idx": 0})[0].targets == "<unk>"
    with pytest.raises(SoftpromptError, match="unknown label 'maybe'"):
        fmt("rte", {"premise": "p", "hypothesis": "h", "idx": 0, "label": "maybe"})


MULTIRC_ROW = {"idx": 4, "version": 1.1, "passage": {"text": "Sent one.<br>It is <b>bold</b>.", "questions": [
    {"question": "Q1?", "idx": 0, "answers": [{"text": "Yes", "idx": 0, "label": 1},
                                              {"text": "No", "idx": 1, "label": 0}]},
    {"question": "Q2?", "idx": 1, "answers": [{"text": "Maybe", "idx": 2, "label": 0}]}]}}


def test_multirc_expands_per_answer_strips_html(tmp_path):
    write_jsonl(tmp_path / "val.jsonl", [MULTIRC_ROW])
    rows = load_rows(get_task("multirc"), tmp_path, "validation")
    assert [r["answer"] for r in rows] == ["Yes", "No", "Maybe"]
    assert rows[0]["idx"] == {"paragraph": 4, "question": 0, "answer": 0}
    exs = load_examples(get_task("multirc"), tmp_path, "validation")
    assert exs[0].inputs == "multirc question: Q1? answer: Yes paragraph: Sent one. It is bold."
    assert [e.targets for e in exs] == ["True", "False", "False"]
    assert [e.meta["group"] for e in exs] == [(4, 0), (4, 0), (4, 1)]


RECORD_ROW = {"source": "CNN", "idx": 7, "passage": {
    "text": "Bob met Ann in Rome.\n@highlight\nBob is here\n@highlight\nAnn left", "entities": [
        {"start": 0, "end": 2}, {"start": 8, "end": 10}, {"start": 15, "end": 18}, {"start": 0, "end": 2}]},
    "qas": [{"query": "@placeholder met Ann.", "idx": 70, "answers": [
        {"start": 0, "end": 2, "text": "Bob"}, {"start": 0, "end": 2, "text": "Bob"}, {"start": 8, "end": 10,
                                                                                       "text": "Ann"}]}]}


def test_record_one_row_per_answer_and_highlights(tmp_path):
    write_jsonl(tmp_path / "dev32.jsonl", [RECORD_ROW])
    exs = load_examples(get_task("record"), tmp_path, "validation")
    assert [e.targets for e in exs] == ["Ann", "Bob"]  # sorted set of answers
    assert exs[0].inputs == ("record query: @placeholder met Ann. entities: Ann, Bob, Rome passage: "
                             "Bob met Ann in Rome. Bob is here. Ann left")
    assert exs[0].meta == {"group": (7, 70), "answers": ["Ann", "Bob"]}
    # metric: one score per query, max over answers
    assert get_task("record").metrics(["bob", "x"], exs) == {"exact_match": 100.0, "f1": 100.0, "score": 100.0}


WSC_ROW = {"text": "Mitchell asked Tom if he could lend some money.", "idx": 5, "label": True,
           "target": {"span1_index": 2, "span1_text": "Tom", "span2_index": 4, "span2_text": "he"}}


def test_wsc_simple_form_and_train_filter(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [WSC_ROW, {**WSC_ROW, "idx": 6, "label": False}])
    write_jsonl(tmp_path / "val.jsonl", [WSC_ROW, {**WSC_ROW, "idx": 6, "label": False}])
    train = load_examples(get_task("wsc"), tmp_path, "train")
    assert [e.idx for e in train] == [5]  # T5 trains on the correct referent only
    val = load_examples(get_task("wsc"), tmp_path, "validation")
    assert val[0].inputs == "wsc: Mitchell asked Tom if *he* could lend some money."
    assert val[0].targets == "Tom" and [e.meta["label"] for e in val] == [True, False]
    assert get_task("wsc", taskless=True).format(load_rows(get_task("wsc"), tmp_path, "validation")[0])[0] \
        .inputs == "Mitchell asked Tom if *he* could lend some money."
    # "the tom" names the referent: true on row 5 (right), false on row 6 (wrong)
    assert get_task("wsc").metrics(["the Tom", "the Tom"], val) == {"accuracy": 50.0, "score": 50.0}


def test_wsc_bad_span_index_names_the_row(tmp_path):
    bad = {**WSC_ROW, "target": {**WSC_ROW["target"], "span2_index": 3}}
    write_jsonl(tmp_path / "val.jsonl", [bad])
    with pytest.raises(SoftpromptError, match=r"val.jsonl: row 1: span2_index 3"):
        load_examples(get_task("wsc"), tmp_path, "validation")


def test_wsc_fixed_repairs_span_case():
    row = {**WSC_ROW, "target": {**WSC_ROW["target"], "span1_text": "tom."}}
    (flat,) = get_task("wsc").normalize_row(row, 0)
    assert flat["span1_text"] == "Tom"


def test_glue_tsv_mrpc_and_qqp(tmp_path):
    (tmp_path / "dev.tsv").write_text('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
                                      '1\t1\t2\tHe said "hi.\tHe said hi.\n0\t3\t4\tA b.\tC d.\n', encoding="utf-8")
    exs = load_examples(get_task("mrpc"), tmp_path, "validation")
    assert exs[0].inputs == 'mrpc sentence1: He said "hi. sentence2: He said hi.'
    assert [e.targets for e in exs] == ["equivalent", "not_equivalent"] and [e.idx for e in exs] == [0, 1]
    (tmp_path / "train.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                                        "10\t1\t2\tWhy?\tHow come?\t1\n", encoding="utf-8")
    (ex,) = load_examples(get_task("qqp"), tmp_path, "train")
    assert (ex.inputs, ex.targets, ex.idx) == ("qqp question1: Why? question2: How come?", "duplicate", 10)


def test_mrqa_jsonl_gz_pads_punctuation(tmp_path):
    lines = [{"header": {"dataset": "SQuAD", "split": "dev"}},
             {"id": "", "context": "Levi's Stadium\nis in Santa Clara.", "qas": [
                 {"qid": "q1", "question": "Where's it?", "answers": ["Santa Clara", "Santa Clara."],
                  "detected_answers": [{"text": "Santa Clara.", "char_spans": [[21, 32]]}]}]}]
    with gzip.open(tmp_path / "SQuAD.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    (ex,) = load_examples(get_task("squad"), tmp_path, "validation")
    assert ex.inputs == "question: Where ' s it ? context: Levi ' s Stadium is in Santa Clara . "
    assert ex.targets == "Santa Clara . " and ex.idx == "q1"
    assert ex.meta["answers"] == ["Santa Clara", "Santa Clara . "]
    assert get_task("squad").metrics(["santa clara"], [ex]) == {"exact_match": 100.0, "f1": 100.0, "score": 100.0}


def test_hub_rows_pass_through_normalizers():
    squad_hub = {"id": "a", "title": "t", "context": "C.", "question": "Q?",
                 "answers": {"text": ["x", "y"], "answer_start": [0, 1]}}
    (row,) = get_task("squad").normalize_row(squad_hub, 0)
    assert row["answers"] == ["x", "y"] and row["answer"] == "x"
    mrqa_hub = {"subset": "DROP", "qid": "q", "context": "C", "question": "Q", "answers": ["a"],
                "detected_answers": {"text": ["a"]}}
    assert get_task("bioasq").normalize_row(mrqa_hub, 0) == []
    assert get_task("drop").normalize_row(mrqa_hub, 0)[0]["answer"] == "a"


def test_every_task_declares_fields_and_classification_tasks_a_design_prompt():
    for task in TASKS.values():
        assert task.fields and set(task.text_fields) <= set(task.fields), task.name
        if task.is_classification:
            assert task.design_prompt, task.name
    assert len(TASKS) >= 16


def test_malformed_local_row_is_reported(tmp_path):
    write_jsonl(tmp_path / "val.jsonl", [{"idx": 1, "passage": {"text": "x"}}])
    with pytest.raises(SoftpromptError, match=r"val.jsonl: row 1 has no field 'questions'"):
        load_rows(get_task("multirc"), tmp_path, "validation")


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("premise", ["a", "list"], "type (premise): a list, expected str"),
    ("hypothesis", None, "not_null (hypothesis): the field is null, expected str"),
    ("idx", "3", "type (idx): a str, expected int"),
])
def test_loaders_refuse_a_row_they_cannot_format(tmp_path, field, value, problem):
    """A list premise or a null hypothesis would be formatted as "['a', 'list']" / "None" and trained on; the
    loaders training and evaluation use refuse it with validation's file:line and check (field) instead."""
    rows = [{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": i} for i in range(3)]
    rows[1][field] = value
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(SoftpromptError) as err:
        load_examples(get_task("rte"), tmp_path, "train")
    assert str(err.value).startswith(f"{tmp_path / 'train.jsonl'}:2: {problem}")
    assert "\n" not in str(err.value)


def test_preview_cli_writes_jsonl(tmp_path):
    from typer.testing import CliRunner

    from softprompt.cli import app

    write_jsonl(tmp_path / "d" / "val.jsonl", [MULTIRC_ROW])
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, ["preview", "--task", "multirc", "--data", str(tmp_path / "d"),
                                      "--limit", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["targets"] for r in rows] == ["True", "False"] and set(rows[0]) == {"idx", "inputs", "targets"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not available")
def test_real_superglue_counts():
    sg = SHARED / "superglue"
    assert len(load_examples(get_task("wsc"), sg / "WSC", "train")) == 259  # T5's weight for wsc_simple_train
    assert len(load_examples(get_task("multirc"), sg / "MultiRC", "train")) == 27243
    assert preview_rows(get_task("rte"), sg / "RTE", "validation", 1)[0]["targets"] == "not_entailment"
