"""AG News topic classification: the showcase task a CPU-built base model can learn (docs/replication.md).

Local files are the official AG News CSVs: no header, quoted columns class (1-4), title, description.
Rows are normalised to the Hub (`fancyzhx/ag_news`) schema: `text` = title + " " + description, `label` =
class - 1. The official release has only train (120K) and test (7.6K); `split_file` cuts a labelled file
into train and validation by a fixed seed (here: the 7,600-row test set into 6,000 + 1,600).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir
from softprompt.tasks.base import Task, glue_formatter, register
from softprompt.tasks.loading import read_csv
from softprompt.tasks.superglue import accuracy_metric

COLUMNS = ("class", "title", "description")


def ag_news_row(row: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """Official CSV row -> Hub row; idx is the row's position in the file."""
    if "text" in row:
        return [{"idx": i, **row}]
    label = int(row["class"]) - 1
    if not 0 <= label <= 3:
        raise ValueError(f"class {row['class']!r} is not 1-4")
    return [{"text": f"{row['title']} {row['description']}".strip(), "label": label, "idx": i}]


AG_NEWS = register(Task(
    name="ag_news",
    description="AG News: the topic of a news article (World, Sports, Business, Sci/Tech).",
    fields={"text": "str", "label": "label", "idx": "int"},
    formatter=glue_formatter(("text",)),
    metric_fn=accuracy_metric,
    main_metric="accuracy",
    label_names=("World", "Sports", "Business", "Sci/Tech"),
    files={"train": ("train.csv",), "validation": ("validation.csv",), "test": ("test.csv",)},
    hub=("fancyzhx/ag_news", None),
    hub_splits={"train": "train", "validation": "test", "test": "test"},
    prefix="ag_news",
    design_prompt="What is the topic of this news article? Answer World, Sports, Business or Sci/Tech.",
    text_fields=("text",),
    normalize_row=ag_news_row,
    csv_columns=COLUMNS,
))


def split_file(source: str | Path, output: str | Path, validation_rows: int, seed: int) -> dict[str, int]:
    """Cut an AG News CSV into `output/train.csv` and `output/validation.csv`: a seeded permutation, the
    first `validation_rows` rows to validation. Rows are written back unchanged (quoted CSV)."""
    source = Path(source)
    if not source.is_file():
        raise SoftpromptError(f"{source}: no such file; pass the AG News CSV (class,title,description)")
    rows = [[r[c] for c in COLUMNS] for _, r in read_csv(source, COLUMNS)]
    if not 0 < validation_rows < len(rows):
        raise SoftpromptError(f"--validation-rows: must be between 1 and {len(rows) - 1} for {source} "
                              f"({len(rows)} rows), got {validation_rows}")
    order = np.random.default_rng(seed).permutation(len(rows))
    parts = {"validation": order[:validation_rows], "train": order[validation_rows:]}
    with atomic_dir(output) as tmp:
        for split, index in parts.items():
            with (tmp / f"{split}.csv").open("w", encoding="utf-8", newline="") as f:
                csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows[int(i)] for i in index)
    return {split: len(index) for split, index in parts.items()}
