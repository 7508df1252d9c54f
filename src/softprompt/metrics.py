"""Metric functions as the benchmarks define them, built on scikit-learn.

Each takes predicted strings and gold strings (or examples) and returns floats in [0, 100]
(percentages, as SuperGLUE reports them).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def confusion(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> dict:
    """Confusion matrix over the label strings plus an `<other>` row/column for non-label outputs."""
    other = "<other>"
    names = [*labels, other]
    preds = [p if p in labels else other for p in predictions]
    golds = [t if t in labels else other for t in targets]
    matrix = confusion_matrix(golds, preds, labels=names).tolist()
    return {"labels": names, "matrix": matrix}
