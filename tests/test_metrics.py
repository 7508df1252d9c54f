"""Metric functions against hand-computed values."""

from __future__ import annotations

import pytest

from softprompt import metrics
from softprompt.tasks import Example, get_task


def test_cb_macro_f1_counts_non_label_as_wrong():
    targets = ["entailment", "contradiction", "neutral", "entailment"]
    preds = ["entailment", "contradiction", "banana", "contradiction"]
    # entailment P=1 R=.5 F=2/3; contradiction P=.5 R=1 F=2/3; neutral F=0 -> mean 4/9
    result = get_task("cb").metrics(preds, [Example(i, "", t) for i, t in enumerate(targets)])
    assert result["f1"] == pytest.approx(100 * 4 / 9)
    assert result["accuracy"] == pytest.approx(50.0)


def test_f1_with_invalid_flips_invalid_predictions():
    targets = ["duplicate", "not_duplicate", "duplicate"]
    # invalid on a negative -> false positive (T5), so TP=1 FP=1 FN=1 -> F1 = .5
    assert metrics.f1_with_invalid(["duplicate", "??", "not_duplicate"], targets, "duplicate",
                                   "not_duplicate") == pytest.approx(50.0)
    assert metrics.binary_f1(["duplicate", "??", "not_duplicate"], targets, "duplicate") == pytest.approx(100 * 2 / 3)


def test_multirc_f1a_and_grouped_exact_match():
    exs = [Example(0, "", "True", {"group": (0, 0)}), Example(1, "", "False", {"group": (0, 0)}),
           Example(2, "", "True", {"group": (0, 1)})]
    result = get_task("multirc").metrics(["True", "False", "False"], exs)
    assert result["exact_match"] == pytest.approx(50.0)  # question (0,0) all right, (0,1) wrong
    assert result["f1a"] == pytest.approx(100 * 2 / 3)  # TP=1 FN=1 FP=0


def test_squad_normalisation_and_max_over_answers():
    assert metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    result = metrics.squad(["the broncos", "Carolina"], [["Denver Broncos", "Broncos"], ["Panthers"]])
    assert result == {"exact_match": 50.0, "f1": 50.0}
    # partial overlap: pred "denver" vs gold "denver broncos": P=1 R=.5 F=2/3
    assert metrics.squad(["Denver"], [["Denver Broncos"]])["f1"] == pytest.approx(100 * 2 / 3)


def test_record_counts_each_query_once():
    meta = {"group": (1, 1), "answers": ["Bob", "Robert"]}
    exs = [Example(0, "q", "Bob", meta), Example(0, "q", "Robert", meta),
           Example(1, "q2", "Ann", {"group": (1, 2), "answers": ["Ann"]})]
    assert get_task("record").metrics(["Robert", "Robert", "Bob"], exs) == {"exact_match": 50.0, "f1": 50.0}


@pytest.mark.parametrize(("pred", "referent", "match"), [
    ("the dog", "Dog", True), ("fuzzy bunny", "bunny", True), ("Bob", "Bob's hat", False),
    ("Tom", "Mitchell", False), ("  The Cat ", "cat", True)])
def test_wsc_referent_match(pred, referent, match):
    assert metrics.wsc_referent_match(pred, referent) is match


def test_superglue_score_averages_task_scores():
    scores = metrics.superglue_score({"cb": {"f1": 80.0, "accuracy": 90.0}, "rte": {"accuracy": 70.0},
                                      "mrpc": {"f1": 1.0}})
    assert scores == {"cb": 85.0, "rte": 70.0, "average": 77.5}
    with pytest.raises(ValueError, match="multirc: metrics lack exact_match"):
        metrics.superglue_score({"multirc": {"f1a": 1.0}})


def test_confusion_has_other_column():
    conf = metrics.confusion(["a", "zzz", "b"], ["a", "b", "b"], ["a", "b"])
    assert conf["labels"] == ["a", "b", "<other>"]
    assert conf["matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
