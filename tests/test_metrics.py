"""Metric functions against hand-computed values."""

from __future__ import annotations

import pytest

from softprompt import metrics
from softprompt.evaluation import score
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
    assert get_task("record").metrics(["Robert", "Robert", "Bob"], exs) == {"exact_match": 50.0, "f1": 50.0,
                                                                             "score": 50.0}


def ex(target: str, **meta) -> Example:
    return Example(0, "x", target, meta)


def test_score_is_the_papers_average_of_a_tasks_metrics():
    """CB (F1+acc)/2, MultiRC (F1a+EM)/2, ReCoRD (F1+EM)/2, MRPC/QQP (F1+acc)/2; one-metric tasks: the metric.
    `score` is what evaluation names as main_metric (selection, promotion); every metric stays in the output."""
    cb = get_task("cb").metrics(["entailment", "entailment", "neutral", "contradiction"],
                                [ex("entailment"), ex("contradiction"), ex("neutral"), ex("contradiction")])
    assert cb["accuracy"] == 75.0 and cb["f1"] != cb["accuracy"]
    assert cb["score"] == pytest.approx((cb["f1"] + 75.0) / 2)
    multirc = get_task("multirc").metrics(["True", "False", "True"], [ex("True", group=1), ex("True", group=1),
                                                                      ex("True", group=2)])
    assert multirc["exact_match"] == 50.0 and multirc["score"] == pytest.approx((multirc["f1a"] + 50.0) / 2)
    record = get_task("record").metrics(["Bob"], [ex("Bob Smith", group=1, answers=["Bob Smith"])])
    assert record["exact_match"] == 0.0 and record["score"] == pytest.approx(record["f1"] / 2)
    for name, pos, neg in (("mrpc", "equivalent", "not_equivalent"), ("qqp", "duplicate", "not_duplicate")):
        m = get_task(name).metrics([pos, neg, neg, neg], [ex(pos), ex(pos), ex(neg), ex(neg)])
        assert m["score"] == pytest.approx((m["f1"] + m["accuracy"]) / 2) and m["f1"] != m["accuracy"]
    assert get_task("rte").metrics(["entailment"], [ex("not_entailment")]) == {"accuracy": 0.0, "score": 0.0}
    scored = score(get_task("cb"), ["entailment", "neutral"], [ex("entailment"), ex("contradiction")])
    assert scored["main_metric"] == "score" and {"f1", "accuracy", "score"} <= set(scored)


def wsc_ex(label: bool) -> Example:
    return Example(0, "wsc: ...", "the dog", {"label": label})


def test_wsc_empty_prediction_is_wrong_for_every_label():
    """T5's wsc_simple returns -1 for an output that is empty once determiners are removed: wrong on label-0 rows
    too (else a model that outputs nothing scores the share of false rows, 63.5 on WSC's validation split)."""
    rows = [wsc_ex(False), wsc_ex(False), wsc_ex(True)]
    wsc = get_task("wsc")
    assert wsc.metrics(["", "the", "  "], rows)["accuracy"] == 0.0
    assert wsc.metrics(["cat", "a cat", "The dog"], rows)["accuracy"] == 100.0
    assert metrics.wsc_simple("the", "dog") == -1 and metrics.wsc_simple("cat", "dog") == 0
    assert metrics.wsc_simple("his dog", "the dog") == 1


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
