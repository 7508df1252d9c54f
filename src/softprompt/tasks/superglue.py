"""The SuperGLUE tasks, formatted as T5's `super_glue_*_v102` tasks."""

from __future__ import annotations

from collections.abc import Sequence

from softprompt import metrics
from softprompt.tasks.base import Example, Task, glue_formatter, register

SUPERGLUE_FILES = {"train": ("train.jsonl",), "validation": ("val.jsonl", "dev32.jsonl"), "test": ("test.jsonl",)}


def accuracy_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    return {"accuracy": metrics.accuracy(predictions, [e.targets for e in examples])}


RTE = register(Task(
    name="rte",
    description="SuperGLUE RTE: does the premise entail the hypothesis?",
    fields={"premise": "str", "hypothesis": "str", "label": "label", "idx": "int"},
    formatter=glue_formatter(),
    metric_fn=accuracy_metric,
    main_metric="accuracy",
    label_names=("entailment", "not_entailment"),
    files=SUPERGLUE_FILES,
    hub=("aps/super_glue", "rte"),
    prefix="rte",
    design_prompt="Does the premise entail the hypothesis? Answer entailment or not_entailment.",
    text_fields=("premise", "hypothesis"),
))
