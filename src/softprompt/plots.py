"""Plot data for `dvc plots`, in the formats DVC reads (JSON lists of objects, CSV), not JSON Lines.

`softprompt evaluate` writes each classification task's confusion data beside its metrics
(`NAME.confusion.json`, one {actual, predicted} object per labeled example, which DVC's `confusion`
template counts), and `softprompt train --loss-history PATH` writes the training loss curve as CSV
(`step,loss`), so `dvc plots show` draws both and `dvc plots diff` overlays two experiments.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softprompt.io import atomic_write_text, write_json
from softprompt.metrics import label_or_other
from softprompt.tasks.base import Example, Task

LOSS_FIELDS = ("step", "loss")


def confusion_path(metrics_path: str | Path) -> Path:
    """Confusion data is written beside the metrics file: metrics.json -> metrics.confusion.json."""
    p = Path(metrics_path)
    return p.with_name(p.name.removesuffix(".json") + ".confusion.json")


def confusion_rows(task: Task, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict[str, str]]:
    """One {actual, predicted} row per labeled example; outputs that are not a label become `<other>`,
    as in the metrics' confusion matrix, so the plot and the matrix count the same cells."""
    labels = task.label_names or ()
    labeled = [(e.targets, p) for e, p in zip(examples, predictions) if e.targets != "<unk>"]
    actual = label_or_other([t for t, _ in labeled], labels)
    predicted = label_or_other([p for _, p in labeled], labels)
    return [{"actual": a, "predicted": p} for a, p in zip(actual, predicted)]


def write_confusion(metrics_path: str | Path, task: Task, examples: Sequence[Example],
                    predictions: Sequence[str]) -> Path | None:
    """Write NAME.confusion.json for a classification task (free-text QA outputs make no matrix): None otherwise."""
    if not task.is_classification:
        return None
    return write_json(confusion_path(metrics_path), confusion_rows(task, examples, predictions))


def write_loss_history(path: str | Path, loss_curve: Sequence[dict[str, Any]]) -> Path:
    """The training loss curve (softprompt.json's `loss_curve`, from the Trainer's log history) as CSV."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LOSS_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(loss_curve)
    return atomic_write_text(path, out.getvalue())
