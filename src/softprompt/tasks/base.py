"""What a task is: a small declarative definition (fields, formatter, label strings, metric).

A task turns one raw row (official field names) into one or more text-to-text `Example`s the way
T5's preprocessors do (`t5/data/preprocessors.py`), and scores predictions with the benchmark's metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from softprompt.errors import SoftpromptError

SPLITS = ("train", "validation", "test")
UNK_TARGET = "<unk>"  # T5's target for an unlabeled row (label == -1)
# The task's score: the mean of its paper metrics (`Task.score_metrics`). Checkpoint selection during
# training, the best prompt of an ensemble or pipeline run and the registry's promotion gate all use it.
SCORE = "score"


@dataclass(frozen=True)
class Example:
    """One text-to-text example: what the encoder reads and what the decoder should produce."""

    idx: Any
    inputs: str
    targets: str
    meta: dict[str, Any] = field(default_factory=dict)  # what metrics need beyond targets (groups, answers)

    def to_json(self) -> dict[str, Any]:
        return {"idx": self.idx, "inputs": self.inputs, "targets": self.targets}


Formatter = Callable[[dict[str, Any], "Task"], list[Example]]
MetricFn = Callable[[Sequence[str], Sequence[Example]], dict[str, float]]
# One raw row (a local file's official layout, or a Hub row) and its 0-based position -> rows in the Hub
# schema that `fields` describes (several for MultiRC/ReCoRD paragraphs, none for an MRQA header line).
RowNormalizer = Callable[[dict[str, Any], int], list[dict[str, Any]]]


@dataclass(frozen=True)
class Task:
    """A task definition. Adding a task is one `Task(...)` entry registered with `register`."""

    name: str
    description: str
    # Field -> type (str | int | bool | label | dict | list) of the rows `load_rows` returns: the Hub
    # (TFDS/`datasets`) schema, which local files in the official layout are normalised to. Used by validation.
    fields: dict[str, str]
    formatter: Formatter
    metric_fn: MetricFn
    main_metric: str  # the headline metric; with score_metrics unset, the score is this metric alone
    label_names: tuple[str, ...] | None = None  # label strings, in the dataset's class-id order
    files: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> candidate local file names
    hub: tuple[str, str | None] | None = None  # (dataset path, config name) for `datasets.load_dataset`
    hub_splits: dict[str, str] = field(default_factory=lambda: {s: s for s in SPLITS})
    prefix: str = ""  # the task-name prefix of the inputs (dropped when taskless)
    design_prompt: str = ""  # a discrete instruction for the prompt-design baseline
    max_target_length: int = 8  # tokens to generate at evaluation (labels are short)
    id_field: str = "idx"
    text_fields: tuple[str, ...] = ()  # fields checked for length/emptiness by validation
    taskless: bool = False
    normalize_row: RowNormalizer | None = None  # raw row -> Hub-schema rows (see RowNormalizer)
    train_filter: Callable[[dict[str, Any]], bool] | None = None  # rows kept for training (WSC: true only)
    group_key: str | None = None  # Example.meta key grouping expanded rows (MultiRC question, ReCoRD query)
    csv_columns: tuple[str, ...] = ()  # column names of header-less .csv split files (AG News's layout)
    # The metrics the paper averages into the task's score (CB: F1 and accuracy); () = main_metric alone.
    score_metrics: tuple[str, ...] = ()

    @property
    def is_classification(self) -> bool:
        return self.label_names is not None

    def with_taskless(self, taskless: bool) -> Task:
        """The same task with the task-name prefix dropped (paper's "taskless" variant) or kept."""
        from dataclasses import replace

        return replace(self, taskless=taskless)

    def label_text(self, raw: Any) -> str:
        """The target string for a raw label value: a class id, a bool, or the label string itself."""
        if raw is None or raw == -1:
            return UNK_TARGET
        if self.label_names is None:
            return str(raw)
        if isinstance(raw, bool):
            # SuperGLUE's bool labels map to T5's ("False", "True") classes.
            return self.label_names[int(raw)]
        if isinstance(raw, int):
            if 0 <= raw < len(self.label_names):
                return self.label_names[raw]
        elif isinstance(raw, str) and raw in self.label_names:
            return raw
        raise SoftpromptError(f"{self.name}: unknown label {raw!r}; expected one of {', '.join(self.label_names)}")

    def format(self, row: dict[str, Any]) -> list[Example]:
        return self.formatter(row, self)

    def join(self, parts: Sequence[str]) -> str:
        """Prefix with the task name (unless taskless) and join with spaces, as T5 does."""
        if self.prefix and not self.taskless:
            parts = [self.prefix, *parts]
        return " ".join(parts)

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """The task's metrics plus `score`, the mean of `score_metrics` (what the paper selects on)."""
        result = dict(self.metric_fn(predictions, examples))
        names = self.score_metrics or (self.main_metric,)
        result[SCORE] = sum(result[n] for n in names) / len(names)
        return result

    @property
    def score_description(self) -> str:
        names = self.score_metrics or (self.main_metric,)
        return names[0] if len(names) == 1 else f"mean({', '.join(names)})"


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str, taskless: bool = False) -> Task:
    """The task called `name` (case-insensitive). Every task is registered by then: importing this module
    imports its package first, whose __init__ imports each task module."""
    task = TASKS.get(name.lower())
    if task is None:
        raise SoftpromptError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return task.with_taskless(taskless) if taskless else task


def glue_formatter(feature_names: Sequence[str] | None = None) -> Formatter:
    """T5's `preprocessors.glue`: "<task> key1: v1 key2: v2 ..." with the label string as target.

    Keys are `feature_names` or, like T5, every field but label and idx in sorted order.
    """

    def fmt(row: dict[str, Any], task: Task) -> list[Example]:
        # T5 quirk: without feature_names the keys are sorted, so COPA reads "choice1: .. choice2: .. premise:".
        keys = feature_names or sorted(set(row) - {"label", "idx"})
        parts: list[str] = []
        for key in keys:
            parts += [f"{key}:", str(row[key])]
        return [Example(idx=row.get(task.id_field), inputs=task.join(parts), targets=task.label_text(row.get("label")))]

    return fmt
