"""Rows of a task split from local files in the official formats, or from the Hugging Face Hub.

Local formats: SuperGLUE jsonl, GLUE tsv (with header), MRQA jsonl / jsonl.gz. The parsers are the
standard library's json/csv, wrapped so a malformed file fails with its path and line number.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.tasks.base import SPLITS, Task


def find_split_file(task: Task, data_dir: str | Path, split: str) -> Path:
    """The file holding `split` of `task` in `data_dir` (first existing candidate name)."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise SoftpromptError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not data_dir.is_dir():
        raise SoftpromptError(f"{data_dir}: no such data directory; pass --data DIR with the {task.name} files")
    candidates = task.files.get(split, ())
    for name in candidates:
        if (data_dir / name).is_file():
            return data_dir / name
    expected = " or ".join(candidates) or "(none defined)"
    raise SoftpromptError(f"{data_dir}: missing the {split} split of {task.name} (expected {expected})")


Line = tuple[int, dict[str, Any]]  # a row and its line in the file (its row number for the Hub)


class RowFieldError(SoftpromptError):
    """A row whose field is null or of the wrong type: what `softprompt validate`'s not_null/type checks name."""


# Python types each `Task.fields` kind accepts (validation's TYPE_NAMES, as types); labels are checked by
# Task.label_text, which knows the label strings.
FIELD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (float, int),
                                            "dict": (dict,), "list": (list,)}


def field_problem(task: Task, row: dict[str, Any]) -> str | None:
    """What is wrong with a normalised row's fields, named as validation names it, or None. A missing field is
    left to the formatter (which names it); a null or mistyped one would be formatted as text ("None", "['a']")."""
    for name, kind in task.fields.items():
        if kind == "label" or name not in row:
            continue
        value = row[name]
        if value is None:
            return f"not_null ({name}): the field is null, expected {kind}"
        types = FIELD_TYPES.get(kind, ())
        if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            return f"type ({name}): a {type(value).__name__}, expected {kind}"
    return None


def read_jsonl(path: Path) -> list[Line]:
    """(line, row) of each row of a .jsonl or .jsonl.gz file; blank lines are skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SoftpromptError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or remove that line") from e
                if not isinstance(row, dict):
                    raise SoftpromptError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append((lineno, row))
    except UnicodeDecodeError as e:
        raise SoftpromptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-encode it as UTF-8") from e
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise SoftpromptError(f"{path}: cannot read ({e}); the file may be truncated or corrupt") from e
    return rows


def read_tsv(path: Path) -> list[Line]:
    """(line, row) of each row of a GLUE tsv with a header line (quotes are literal text in GLUE files)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if not header:
                raise SoftpromptError(f"{path}: empty file; expected a header line")
            rows = []
            for lineno, values in enumerate(reader, 2):
                if len(values) != len(header):
                    raise SoftpromptError(f"{path}:{lineno}: {len(values)} columns, header has {len(header)}")
                rows.append((lineno, dict(zip(header, values))))
    except UnicodeDecodeError as e:
        raise SoftpromptError(f"{path}: not UTF-8 text ({e.reason}); re-encode it as UTF-8") from e
    return rows


def read_csv(path: Path, columns: tuple[str, ...]) -> list[Line]:
    """Rows of a header-less, quoted .csv whose columns are `columns` (AG News's official layout)."""
    if not columns:
        raise SoftpromptError(f"{path}: this task's files are not .csv; use the official format")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = []
            for lineno, values in enumerate(csv.reader(f), 1):
                if len(values) != len(columns):
                    raise SoftpromptError(f"{path}:{lineno}: {len(values)} columns, expected {len(columns)} "
                                          f"({', '.join(columns)})")
                rows.append((lineno, dict(zip(columns, values))))
    except UnicodeDecodeError as e:
        raise SoftpromptError(f"{path}: not UTF-8 text ({e.reason}); re-encode it as UTF-8") from e
    except csv.Error as e:
        raise SoftpromptError(f"{path}: malformed CSV ({e}); fix the quoting") from e
    return rows


def read_file(path: Path, csv_columns: tuple[str, ...] = ()) -> list[Line]:
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return read_jsonl(path)
    if path.suffix == ".tsv":
        return read_tsv(path)
    if path.suffix == ".csv":
        return read_csv(path, csv_columns)
    raise SoftpromptError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz, .tsv or .csv)")


def load_rows(task: Task, data_dir: str | Path | None, split: str) -> list[dict[str, Any]]:
    """Raw rows of one split in the Hub schema (`task.fields`), from `data_dir` or (when None) the Hub."""
    if data_dir is not None:
        path = find_split_file(task, data_dir, split)
        return checked_rows(task, read_file(path, task.csv_columns), str(path))
    return checked_rows(task, list(enumerate(load_hub_rows(task, split), 1)), f"{task.name} {split} (Hub)")


def checked_rows(task: Task, lines: list[Line], where: str) -> list[dict[str, Any]]:
    """Normalise each row (official local layout -> Hub schema) and refuse one with a null or mistyped field,
    naming the file, line and field as validation does."""
    out: list[dict[str, Any]] = []
    for i, (line, raw) in enumerate(lines):
        for row in normalize_row(task, raw, i, where):
            if problem := field_problem(task, row):
                raise RowFieldError(f"{where}:{line}: {problem}; fix that row (`softprompt validate` lists "
                                    "every such row)")
            out.append(row)
    return out


def normalize_row(task: Task, row: dict[str, Any], i: int, where: str) -> list[dict[str, Any]]:
    """Apply the task's row normaliser to the i-th row, naming the bad row on error."""
    if task.normalize_row is None:
        return [row]
    try:
        return task.normalize_row(row, i)
    except KeyError as e:
        raise SoftpromptError(f"{where}: row {i + 1} has no field {e}; expected the official "
                              f"{task.name} layout") from e
    except (TypeError, ValueError, AttributeError) as e:
        raise SoftpromptError(f"{where}: row {i + 1} is malformed ({e}); expected the official "
                              f"{task.name} layout") from e


def load_hub_rows(task: Task, split: str) -> list[dict[str, Any]]:
    """Rows of a split from the Hub through `datasets`; class ids stay ints (Task.label_text maps them)."""
    if task.hub is None:
        raise SoftpromptError(f"{task.name}: no Hugging Face Hub dataset is defined; pass --data DIR")
    path, config = task.hub
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=task.hub_splits.get(split, split))
    except Exception as e:  # datasets raises many types for offline / missing data
        raise SoftpromptError(f"cannot load {task.name} ({path}, {config}) from the Hugging Face Hub: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                              "pass --data DIR with the task's files") from e
    return [dict(r) for r in ds]


def load_examples(task: Task, data_dir: str | Path | None, split: str, limit: int | None = None):
    """Formatted examples of one split, in file order (expanded rows for MultiRC/ReCoRD)."""
    rows = load_rows(task, data_dir, split)
    where = find_split_file(task, data_dir, split) if data_dir is not None else f"{task.name} {split} (Hub)"
    if split == "train" and task.train_filter is not None:
        # e.g. T5's WSC simple train task keeps only rows whose candidate is the correct referent.
        rows = [r for r in rows if task.train_filter(r)]
    examples = []
    for i, row in enumerate(rows):
        try:
            examples.extend(task.format(row))
        except KeyError as e:
            raise SoftpromptError(f"{where}: row {i + 1} has no field {e}; expected fields "
                                  f"{', '.join(task.fields)}") from e
        except SoftpromptError as e:
            raise SoftpromptError(f"{where}: row {i + 1}: {e}") from e
        if limit is not None and len(examples) >= limit:
            return examples[:limit]
    return examples


def preview_rows(task: Task, data_dir: str | Path | None, split: str, limit: int | None = None) -> list[dict]:
    """What the model sees: `{idx, inputs, targets}` per formatted example, in file order."""
    return [e.to_json() for e in load_examples(task, data_dir, split, limit=limit)]
