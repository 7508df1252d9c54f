"""GLUE paraphrase tasks (MRPC, QQP) as T5's `glue_*_v002` tasks, for the paper's domain-transfer runs.

Local files are the GLUE tsv files (with header): MRPC's `Quality / #1 String / #2 String` columns and
QQP's `id / question1 / question2 / is_duplicate`; both are normalised to the Hub (`nyu-mll/glue`) schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from softprompt import metrics
from softprompt.tasks.base import Example, Task, glue_formatter, register

GLUE_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv",), "test": ("test.tsv",)}
HUB = "nyu-mll/glue"
PAPER_SCORE = ("f1", "accuracy")  # the paper averages F1 and accuracy for MRPC and QQP


def paraphrase_metric(positive: str, negative: str):
    """Accuracy and F1 of the positive class; a non-label output counts as wrong (T5 f1_score_with_invalid)."""

    def fn(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        targets = [e.targets for e in examples]
        return {"f1": metrics.f1_with_invalid(predictions, targets, positive, negative),
                "accuracy": metrics.accuracy(predictions, targets)}

    return fn


def tsv_label(value: str | None) -> int:
    """A tsv label cell -> class id (-1 when the split has no labels)."""
    return -1 if value is None or value == "" else int(value)


def mrpc_row(row: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """GLUE MRPC tsv row -> Hub row; idx is the row's position in the file, as in TFDS/`datasets`."""
    if "sentence1" in row:
        return [row]
    return [{"sentence1": row["#1 String"], "sentence2": row["#2 String"],
             "label": tsv_label(row.get("Quality")), "idx": i}]


def qqp_row(row: dict[str, Any], _: int) -> list[dict[str, Any]]:
    """GLUE QQP tsv row -> Hub row (the test file has no is_duplicate column)."""
    if "label" in row:
        return [row]
    return [{"question1": row["question1"], "question2": row["question2"],
             "label": tsv_label(row.get("is_duplicate")), "idx": int(row["id"])}]


MRPC = register(Task(
    name="mrpc",
    score_metrics=PAPER_SCORE,
    description="GLUE MRPC: are the two sentences paraphrases (equivalent)?",
    fields={"sentence1": "str", "sentence2": "str", "label": "label", "idx": "int"},
    formatter=glue_formatter(("sentence1", "sentence2")),
    metric_fn=paraphrase_metric("equivalent", "not_equivalent"),
    main_metric="f1",
    label_names=("not_equivalent", "equivalent"),
    files=GLUE_FILES,
    hub=(HUB, "mrpc"),
    prefix="mrpc",
    design_prompt="Do the two sentences mean the same thing? Answer equivalent or not_equivalent.",
    text_fields=("sentence1", "sentence2"),
    normalize_row=mrpc_row,
))

QQP = register(Task(
    name="qqp",
    score_metrics=PAPER_SCORE,
    description="GLUE QQP: are the two Quora questions duplicates?",
    fields={"question1": "str", "question2": "str", "label": "label", "idx": "int"},
    formatter=glue_formatter(("question1", "question2")),
    metric_fn=paraphrase_metric("duplicate", "not_duplicate"),
    main_metric="f1",
    label_names=("not_duplicate", "duplicate"),
    files=GLUE_FILES,
    hub=(HUB, "qqp"),
    prefix="qqp",
    design_prompt="Do the two questions ask the same thing? Answer duplicate or not_duplicate.",
    text_fields=("question1", "question2"),
    normalize_row=qqp_row,
))
