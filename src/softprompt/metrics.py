"""Metric functions as the benchmarks define them, built on scikit-learn.

Each takes predicted strings and gold strings (or examples) and returns floats in [0, 100]
(percentages, as SuperGLUE reports them).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def accuracy(predictions: Sequence[str], targets: Sequence[str]) -> float:
    return 100.0 * float(accuracy_score(list(targets), list(predictions))) if targets else 0.0


def macro_f1(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> float:
    """Macro-averaged F1 over `labels` (a prediction outside them counts as wrong for every class)."""
    return 100.0 * float(f1_score(list(targets), list(predictions), labels=list(labels), average="macro",
                                  zero_division=0))


def binary_f1(predictions: Sequence[str], targets: Sequence[str], positive: str) -> float:
    y_true = [t == positive for t in targets]
    y_pred = [p == positive for p in predictions]
    return 100.0 * float(f1_score(y_true, y_pred, zero_division=0))


OTHER = "<other>"  # the confusion matrix's row/column for outputs that are not a label


def label_or_other(values: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Each value if it is one of `labels`, else `<other>`."""
    return [v if v in labels else OTHER for v in values]


def confusion(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> dict:
    """Confusion matrix over the label strings plus an `<other>` row/column for non-label outputs."""
    names = [*labels, OTHER]
    matrix = confusion_matrix(label_or_other(targets, labels), label_or_other(predictions, labels),
                              labels=names).tolist()
    return {"labels": names, "matrix": matrix}


def f1_with_invalid(predictions: Sequence[str], targets: Sequence[str], positive: str, negative: str) -> float:
    """Binary F1 as T5's `f1_score_with_invalid`: an output that is neither label counts as the wrong class.

    (Plain binary F1 would treat it as negative, which is free credit on negative examples.)
    """
    y_true = [t == positive for t in targets]
    y_pred = [(p == positive) if p in (positive, negative) else not t for p, t in zip(predictions, y_true)]
    return 100.0 * float(f1_score(y_true, y_pred, zero_division=0))


def group_exact_match(predictions: Sequence[str], targets: Sequence[str], groups: Sequence[object]) -> float:
    """Percent of groups whose every prediction equals its target (MultiRC EM, T5's mean_group_metric(all_match))."""
    correct: dict[object, bool] = {}
    for p, t, g in zip(predictions, targets, groups):
        correct[g] = correct.get(g, True) and p == t
    return 100.0 * sum(correct.values()) / len(correct) if correct else 0.0


# SQuAD normalisation and token F1 follow the official SQuAD v1.1 evaluation script
# (https://rajpurkar.github.io/SQuAD-explorer/ `evaluate-v1.1.py`, also T5's `t5/evaluation/qa_utils.py`
# and `evaluate`'s squad metric): lower-case, drop punctuation, drop articles, collapse whitespace.
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of two already-normalised strings (0..1)."""
    pred, gold = prediction.split(), truth.split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 (percent), each the max over an example's gold answers."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers):
        p = normalize_answer(pred)
        normed = [normalize_answer(g) for g in golds] or [""]
        em += max(float(p == g) for g in normed)
        f1 += max(token_f1(p, g) for g in normed)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}


def deduplicate(predictions: Sequence[str], items: Sequence[Any], groups: Sequence[object]) -> tuple[list, list]:
    """Keep the first row of each group (T5's deduplicate_metric: ReCoRD rows repeat per answer)."""
    seen: set[object] = set()
    preds, kept = [], []
    for p, item, g in zip(predictions, items, groups):
        if g not in seen:
            seen.add(g)
            preds.append(p)
            kept.append(item)
    return preds, kept


WSC_DETERMINERS = frozenset({"a", "an", "few", "her", "his", "each", "every", "many", "much", "my", "our", "some",
                             "that", "the", "their", "these", "this", "those", "which", "whose", "your"})


def wsc_simple(prediction: str, referent: str) -> int:
    """T5's `postprocessors.wsc_simple`: 1 if the model named the candidate referent, 0 if it named something
    else, -1 if its output is empty once determiners are removed (-1 then equals no label: wrong on every row).

    Case and determiners are ignored; "fuzzy bunny" matches "bunny" (either word set contains the other),
    but "Bob" does not match "Bob's hat" (a possessive on one side only).
    """

    def clean(s: str) -> str:
        return " ".join(w for w in s.strip().lower().split(" ") if w not in WSC_DETERMINERS)

    pred, ref = clean(prediction), clean(referent)
    if not pred:
        return -1
    if ("'" in pred) != ("'" in ref):
        return 0
    pred_words, ref_words = set(pred.split(" ")), set(ref.split(" "))
    return int(pred_words <= ref_words or ref_words <= pred_words)


def wsc_referent_match(prediction: str, referent: str) -> bool:
    """Did the model name the candidate referent (`wsc_simple` == 1)?"""
    return wsc_simple(prediction, referent) == 1


# The official metrics of each SuperGLUE task; a task's score is their mean, the benchmark score the mean of those.
SUPERGLUE_METRICS: dict[str, tuple[str, ...]] = {
    "boolq": ("accuracy",), "cb": ("f1", "accuracy"), "copa": ("accuracy",), "multirc": ("f1a", "exact_match"),
    "record": ("f1", "exact_match"), "rte": ("accuracy",), "wic": ("accuracy",), "wsc": ("accuracy",),
}


def superglue_score(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-task scores and their average (the SuperGLUE score) over the tasks given.

    `results` maps a task name to its metrics dict (as `softprompt evaluate` writes); tasks outside SuperGLUE
    are ignored. The average covers only the tasks present, so report which ones it covers.
    """
    scores: dict[str, float] = {}
    for task, names in SUPERGLUE_METRICS.items():
        if task in results:
            missing = [n for n in names if n not in results[task]]
            if missing:
                raise ValueError(f"{task}: metrics lack {', '.join(missing)}")
            scores[task] = sum(float(results[task][n]) for n in names) / len(names)
    if scores:
        scores["average"] = sum(scores.values()) / len(scores)
    return scores
