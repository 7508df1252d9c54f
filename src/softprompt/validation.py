"""Data validation with Great Expectations 1.x: the gate in front of training.

`validate(task, data_dir, report_dir)` reads every split of a task with the training loaders, runs one
expectation suite per split (built in one place, `build_suite`, from the task definition) through GX
data sources, batch definitions, validation definitions and checkpoints, and writes a JSON result plus
the GX Data Docs site into the report directory. Only when every expectation passes are the split files
copied, byte for byte, into the canonical dataset directory that training reads.

A broken line does not stop the run: the file is scanned line by line, every unreadable line becomes an
unexpected value of the split's `file_readable` expectation, and the rows that did parse are still
validated, so one run shows every problem. Great Expectations is imported only inside this module's
functions: it takes seconds to import and the other commands must not pay for it.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softprompt.config import ValidateConfig
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, file_md5, write_json
from softprompt.tasks.base import SPLITS, Task, get_task
from softprompt.tasks.loading import RowFieldError, find_split_file, load_rows

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

LINE = "__line__"  # file line of a row: how offending rows are named in the report
INPUT_KEY = "__input__"  # hash of a row's input fields: exact-duplicate (leakage) detection
ID_KEY = "__id_key__"  # JSON of an unhashable id (MultiRC/ReCoRD dict idx), for the uniqueness check
PROBLEM = "problem"  # column of the per-split file frame: None for a good line, else what is wrong
REQUIRED_SPLITS = ("train", "validation")  # training reads these; test is validated when present
RESULT_FILE = "validation.json"
SUITES_DIR = "expectations"  # every suite run, as GX JSON: gx.ExpectationSuite(**json.load(f)) reopens it
DOCS_DIR = "data_docs"
MANIFEST = "validated.json"
TRAIN_INPUTS = "train_input_keys"  # suite parameter: the train split's input keys (leakage check)
# Python type names each task field type may hold (GX's expect_column_values_to_be_in_type_list).
# NUL and the other C0 control characters and DEL (tab, newline and carriage return are text): a tokenizer
# would silently drop or mangle them. C1 (U+0080-U+009F) is left alone: the official RTE files hold it in
# mojibake ("Iraq\u00e2\u0080\u0099s"), which every published result was trained and scored on.
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
TYPE_NAMES = {"str": ["str"], "int": ["int"], "bool": ["bool"], "float": ["float", "int"],
              "label": ["str", "int", "bool"], "dict": ["dict"], "list": ["list"]}
@dataclass
class SplitData:
    """One split as read from disk: normalised rows (each tagged with its file line) and file problems."""

    split: str
    path: Path | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)  # {"line": int | None, "problem": str}


# ---------------------------------------------------------------- reading


def _problem(line: int | None, text: str) -> dict[str, Any]:
    return {"line": line, PROBLEM: text}


def _raw_lines(path: Path, problems: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    """Non-blank lines of a (possibly gzipped) file; a truncated or corrupt file keeps the lines before it."""
    lines: list[tuple[int, bytes]] = []
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    lines.append((lineno, line))
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        problems.append(_problem(None, f"{path}: cannot read after line {len(lines)} ({e}); the file may be "
                                       "truncated or corrupt"))
    return lines


def _decode(path: Path, lineno: int, line: bytes, problems: list[dict[str, Any]]) -> str | None:
    try:
        return line.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        problems.append(_problem(lineno, f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start}); "
                                         "re-encode the file as UTF-8"))
        return None


def _scan_jsonl(path: Path, problems: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) for every line that is a JSON object; every other line becomes a problem."""
    rows = []
    for lineno, raw in _raw_lines(path, problems):
        text = _decode(path, lineno, raw, problems)
        if text is None:
            continue
        try:
            row = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            problems.append(_problem(lineno, f"{path}:{lineno}: invalid JSON, column {e.colno}: {e.msg}; "
                                             "fix or remove that line"))
            continue
        if not isinstance(row, dict):
            problems.append(_problem(lineno, f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"))
            continue
        rows.append((lineno, row))
    return rows


def _scan_tsv(path: Path, problems: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a GLUE tsv with a header (quotes are literal text, as in `read_tsv`)."""
    lines = _raw_lines(path, problems)
    if not lines:
        problems.append(_problem(None, f"{path}: empty file; expected a header line"))
        return []
    decoded = [(n, _decode(path, n, raw, problems)) for n, raw in lines]
    header = (decoded[0][1] or "").rstrip("\r\n").split("\t")
    rows = []
    for lineno, text in decoded[1:]:
        if text is None:
            continue
        values = text.rstrip("\r\n").split("\t")
        if len(values) != len(header):
            problems.append(_problem(lineno, f"{path}:{lineno}: {len(values)} columns, header has {len(header)}"))
            continue
        rows.append((lineno, dict(zip(header, values))))
    return rows


def _scan_csv(path: Path, problems: list[dict[str, Any]], columns: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a header-less quoted .csv with `columns` (as `read_csv` reads it)."""
    rows = []
    for lineno, raw in _raw_lines(path, problems):
        text = _decode(path, lineno, raw, problems)
        if text is None:
            continue
        try:
            values = next(csv.reader([text.rstrip("\r\n")]))
        except csv.Error as e:
            problems.append(_problem(lineno, f"{path}:{lineno}: malformed CSV ({e}); fix the quoting"))
            continue
        if len(values) != len(columns):
            problems.append(_problem(lineno, f"{path}:{lineno}: {len(values)} columns, expected {len(columns)} "
                                             f"({', '.join(columns)})"))
            continue
        rows.append((lineno, dict(zip(columns, values))))
    return rows


def _normalize(task: Task, path: Path, scanned: list[tuple[int, dict[str, Any]]],
               problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply the task's row normaliser (local layout -> `task.fields` schema) row by row, keeping line numbers."""
    out = []
    for i, (lineno, row) in enumerate(scanned):
        try:
            rows = task.normalize_row(row, i) if task.normalize_row else [row]
        except KeyError as e:
            problems.append(_problem(lineno, f"{path}:{lineno}: no field {e}; expected the official {task.name} "
                                             "layout"))
            continue
        except (TypeError, ValueError, AttributeError) as e:
            problems.append(_problem(lineno, f"{path}:{lineno}: malformed row ({e}); expected the official "
                                             f"{task.name} layout"))
            continue
        out.extend({**r, LINE: lineno} for r in rows)
    return out


def read_split(task: Task, data_dir: Path, split: str, required: bool) -> SplitData | None:
    """Read one split tolerantly; None when an optional split is absent."""
    try:
        path = find_split_file(task, data_dir, split)
    except SoftpromptError as e:
        return SplitData(split, None, problems=[_problem(None, str(e))]) if required else None
    data = SplitData(split, path)
    if path.suffix == ".csv":
        scanned = _scan_csv(path, data.problems, task.csv_columns)
    else:
        scanned = (_scan_tsv if path.suffix == ".tsv" else _scan_jsonl)(path, data.problems)
    data.rows = _normalize(task, path, scanned, data.problems)
    if not data.problems:
        # The training loader must accept the file too: if it disagrees with the scan, that is a problem.
        try:
            load_rows(task, data_dir, split)
        except RowFieldError:
            pass  # a null or mistyped field: the suite's not_null / type expectations name every such row
        except SoftpromptError as e:
            data.problems.append(_problem(None, str(e)))
    return data


# ---------------------------------------------------------------- frames


def label_field(task: Task) -> str | None:
    return next((name for name, kind in task.fields.items() if kind == "label"), None)


def input_fields(task: Task) -> list[str]:
    """Fields the model reads (everything but the label and the id): equal values = duplicate inputs."""
    return [f for f in task.fields if f != task.id_field and task.fields[f] != "label"]


def _input_key(row: dict[str, Any], names: list[str]) -> str:
    blob = json.dumps([row.get(n) for n in names], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def split_frame(task: Task, data: SplitData) -> pd.DataFrame:
    """The split's rows as an object-dtype DataFrame (values keep their JSON types) plus helper columns."""
    import pandas as pd

    names = input_fields(task)
    rows = []
    for row in data.rows:
        extra = {INPUT_KEY: _input_key(row, names)}
        if task.fields.get(task.id_field) in ("dict", "list") and row.get(task.id_field) is not None:
            extra[ID_KEY] = json.dumps(row[task.id_field], sort_keys=True)
        rows.append({**row, **extra})
    columns = list(dict.fromkeys([*task.fields, *(k for r in rows for k in r)]))
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    if not rows:
        return frame  # an empty split fails min_rows; its columns are not the problem
    # Fields no row has are absent, not null: the column-exists expectation names them.
    return frame[[c for c in columns if c not in task.fields or any(c in r for r in rows)]]


def problem_frame(data: SplitData) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(data.problems or [_problem(None, None)], columns=["line", PROBLEM], dtype=object)


# ---------------------------------------------------------------- the suite


def _label_values(task: Task, index: int) -> list[Any]:
    """Raw values `Task.label_text` maps to class `index`: its string, its class id, and True/False if binary."""
    assert task.label_names is not None
    values: list[Any] = [task.label_names[index], index]
    if len(task.label_names) == 2:
        values.append(bool(index))
    return values


def build_suite(task: Task, split: str, columns: list[str], cfg: ValidateConfig,
                train_inputs: list[str] | None) -> Any:
    """The expectation suite of one split of `task`: every check lives here, derived from the definition.

    `columns` are the frame's columns (column-level checks run only on columns that exist; a missing one
    fails `column_exists`), `train_inputs` the train split's input keys (None: no leakage check).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{task.name}.{split}")
    labels = label_field(task)
    unlabeled_ok = split == "test"  # test labels are hidden (-1) or absent

    def add(check: str, notes: str, expectation: Any) -> None:
        expectation.meta = {"check": check, "split": split}
        expectation.notes = notes
        suite.add_expectation(expectation)

    add("min_rows", f"the {split} split has at least {cfg.min_rows} rows",
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows))
    expected = [f for f in task.fields if f in columns or not (unlabeled_ok and f == labels)]
    for name in expected:
        add("column_exists", f"every row has the field {name!r}", gxe.ExpectColumnToExist(column=name))
    helpers = [c for c in (LINE, INPUT_KEY, ID_KEY) if c in columns]
    add("known_columns", f"rows have only the fields of {task.name}: {', '.join(task.fields)}",
        gxe.ExpectTableColumnsToMatchSet(column_set=[c for c in expected if c in columns] + helpers,
                                         exact_match=True))
    for name, kind in task.fields.items():
        if name not in columns:
            continue
        if not (unlabeled_ok and name == labels):
            add("not_null", f"{name!r} is never null or missing", gxe.ExpectColumnValuesToNotBeNull(column=name))
        add("type", f"{name!r} is of type {kind}",
            gxe.ExpectColumnValuesToBeInTypeList(column=name, type_list=TYPE_NAMES.get(kind, [kind])))
    _text_checks(task, columns, cfg, add, gxe)
    _id_check(task, columns, add, gxe)
    if labels in columns and task.label_names:
        _label_checks(task, split, labels, cfg, add, gxe)
    if train_inputs is not None and split != "train" and INPUT_KEY in columns:
        add("no_leakage", f"no {split} row has exactly the inputs of a train row",
            # A suite parameter, resolved at run time: thousands of keys inline would be copied (and
            # rendered in Data Docs) for every metric GX computes.
            gxe.ExpectColumnValuesToNotBeInSet(column=INPUT_KEY, value_set={"$PARAMETER": TRAIN_INPUTS}))
    return suite


def _text_checks(task: Task, columns: list[str], cfg: ValidateConfig, add: Any, gxe: Any) -> None:
    for name in task.text_fields:
        if name not in columns or task.fields.get(name, "str") != "str":
            continue
        if cfg.min_text_chars > 0:  # min_text_chars 0 lets empty text through (MultiRC has empty answers)
            add("text_not_blank", f"{name!r} is not empty or only whitespace",
                gxe.ExpectColumnValuesToMatchRegex(column=name, regex=r"\S"))
        add("text_control_chars", f"{name!r} has no NUL or other control characters",
            gxe.ExpectColumnValuesToNotMatchRegex(column=name, regex=CONTROL_CHARS))
        add("text_length", f"{name!r} has {cfg.min_text_chars} to {cfg.max_text_chars} characters",
            gxe.ExpectColumnValueLengthsToBeBetween(column=name, min_value=cfg.min_text_chars,
                                                    max_value=cfg.max_text_chars))


def _id_check(task: Task, columns: list[str], add: Any, gxe: Any) -> None:
    id_column = ID_KEY if ID_KEY in columns else task.id_field
    if id_column in columns:
        add("unique_id", f"{task.id_field!r} is unique within the split",
            gxe.ExpectColumnValuesToBeUnique(column=id_column))


def _label_checks(task: Task, split: str, labels: str, cfg: ValidateConfig, add: Any, gxe: Any) -> None:
    assert task.label_names is not None
    allowed = [v for i in range(len(task.label_names)) for v in _label_values(task, i)]
    if split == "test":
        allowed.append(-1)  # SuperGLUE/GLUE test rows carry -1 (hidden label)
    add("label_in_set", f"{labels!r} is one of {', '.join(task.label_names)}",
        gxe.ExpectColumnValuesToBeInSet(column=labels, value_set=allowed))
    degenerate_ok = split == "train" and task.train_filter is not None  # e.g. WSC trains on true rows only
    if split == "test" or cfg.min_class_share <= 0 or degenerate_ok:
        return
    for i, name in enumerate(task.label_names):
        # `mostly` makes GX's in-set expectation a share check: at least this fraction of labels is `name`.
        add("class_share", f"label {name!r} has at least {cfg.min_class_share:.0%} of the rows",
            gxe.ExpectColumnValuesToBeInSet(column=labels, value_set=_label_values(task, i),
                                            mostly=cfg.min_class_share))


def build_file_suite(task: Task, split: str) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{task.name}.{split}.file")
    expectation = gxe.ExpectColumnValuesToBeNull(column=PROBLEM)
    expectation.meta = {"check": "file_readable", "split": split}
    expectation.notes = f"the {split} file exists and every line parses as a {task.name} row"
    suite.add_expectation(expectation)
    return suite


# ---------------------------------------------------------------- running GX


def _context(docs_dir: Path) -> Any:
    """An ephemeral GX context (in-memory stores) whose Data Docs site is written to `docs_dir`."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter is not for users
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False), data_docs_sites={"local": site})
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_checkpoint(context: Any, source: Any, name: str, suite: Any, frame: pd.DataFrame,
                    index_columns: list[str], cfg: ValidateConfig,
                    parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Data asset + batch definition + suite + validation definition + checkpoint for one frame; its results."""
    import great_expectations as gx

    batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}.all")
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": cfg.examples,
                     "unexpected_index_column_names": index_columns}
    checkpoint = context.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[definition],
                                                       result_format=result_format))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
    return [r.to_json_dict() for run in outcome.run_results.values() for r in run.results]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _clip(value: Any, limit: int = 120) -> Any:
    text = value if isinstance(value, str) else None
    return text[:limit] + "..." if text is not None and len(text) > limit else value


def _check_record(task: Task, raw: dict[str, Any], rows_by_line: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One expectation result as the report's JSON: what was checked, counts, and sample offending rows."""
    config = raw["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "value_set")}
    result = raw.get("result") or {}
    record = {
        "split": config["meta"]["split"], "check": config["meta"]["check"], "expectation": config["type"],
        "column": kwargs.get("column"), "description": config.get("notes"), "success": bool(raw["success"]),
        "kwargs": _jsonable(kwargs),
    }
    for key in ("element_count", "unexpected_count", "unexpected_percent", "missing_count", "observed_value"):
        if key in result:
            record[key] = _jsonable(result[key])
    if details := result.get("details"):
        record["details"] = _jsonable(details)
    info = raw.get("exception_info") or {}
    if info.get("raised_exception"):
        record["error"] = str(info.get("exception_message", "")).splitlines()[0][:300]
    if not record["success"] and record["check"] not in ("class_share",):
        record["examples"] = [_example(task, hit, record["column"], rows_by_line)
                              for hit in result.get("partial_unexpected_index_list") or []]
    if record["check"] == "class_share" and "element_count" in result:
        labeled = result["element_count"] - result.get("missing_count", 0)
        record["observed_share"] = round(1 - result.get("unexpected_count", 0) / labeled, 4) if labeled else 0.0
    return record


def _example(task: Task, hit: dict[str, Any], column: str | None, rows_by_line: dict[int, dict[str, Any]]) -> Any:
    line = _jsonable(hit.get(LINE, hit.get("line")))
    out: dict[str, Any] = {"line": line}
    row = rows_by_line.get(line) if isinstance(line, int) else None
    if row is not None:
        out["id"] = _jsonable(row.get(task.id_field))
    if column and column in hit and column != task.id_field:
        out["value"] = _clip(_jsonable(hit[column]), 400)
    if row is not None and column == INPUT_KEY:
        out["inputs"] = {f: _clip(_jsonable(row.get(f))) for f in input_fields(task)}
    return out


# ---------------------------------------------------------------- the command


def _splits_to_check(task: Task, splits: list[str] | None) -> list[tuple[str, bool]]:
    """(split, required) pairs: explicit splits are all required; by default train/validation are, test is not."""
    if splits:
        for s in splits:
            if s not in SPLITS:
                raise SoftpromptError(f"unknown split {s!r}; choose from {', '.join(SPLITS)}")
        return [(s, True) for s in splits]
    return [(s, s in REQUIRED_SPLITS) for s in SPLITS if task.files.get(s)]


def validate(task: str | Task, data_dir: str | Path, report_dir: str | Path, cfg: ValidateConfig | None = None,
             output: str | Path | None = None, splits: list[str] | None = None, docs: bool = True) -> dict[str, Any]:
    """Validate every split of `task` in `data_dir`; write the report; on success copy the files to `output`.

    Returns the report (also written to REPORT/validation.json). Raises SoftpromptError only for bad usage
    (unknown task, no data directory); problems in the data are failed expectations in the report.
    """
    task = get_task(task) if isinstance(task, str) else task
    cfg = cfg or ValidateConfig()
    data_dir, report_dir = Path(data_dir), Path(report_dir)
    if not data_dir.is_dir():
        raise SoftpromptError(f"{data_dir}: no such data directory; pass --data DIR with the {task.name} files")
    _check_replaceable(report_dir, RESULT_FILE, "--report")
    if output is not None:
        _check_replaceable(Path(output), MANIFEST, "--output")
    data = [d for s, required in _splits_to_check(task, splits) if (d := read_split(task, data_dir, s, required))]
    with atomic_dir(report_dir) as tmp:
        checks = _run_suites(task, data, cfg, tmp / DOCS_DIR, docs, tmp / SUITES_DIR)
        report = _report(task, data_dir, data, cfg, checks, docs)
        write_json(tmp / RESULT_FILE, report)
    report["report"] = str(report_dir / RESULT_FILE)
    if report["success"] and output is not None:
        write_validated(task, data_dir, data, Path(output), report_dir)
        report["output"] = str(output)
    return report


def split_files(task: Task, data_dir: str | Path) -> dict[str, str]:
    """{file name: md5} of the split files `validate` reads by default (train, validation, test if present):
    what its manifest records when every expectation passes, computed without reading a row."""
    files = {}
    for split, _ in _splits_to_check(task, None):
        with contextlib.suppress(SoftpromptError):  # absent: validation would name it (or skip optional test)
            path = find_split_file(task, data_dir, split)
            files[path.name] = file_md5(path)
    return files


def suite_key(task: Task, cfg: ValidateConfig) -> str:
    """What decides a validation result besides the data: the task, the thresholds and this module's code."""
    code = file_md5(Path(__file__))
    return hashlib.md5(json.dumps([task.name, asdict(cfg), code], sort_keys=True).encode()).hexdigest()[:16]


def _check_replaceable(path: Path, marker: str, option: str) -> None:
    """Refuse to replace a non-empty directory this command did not write (e.g. `--report .`)."""
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / marker).is_file()):
        raise SoftpromptError(f"{path}: {option} exists and is not an earlier output of `softprompt validate` "
                              f"(no {marker}); it would be replaced, so pass a new or empty directory")


def _run_suites(task: Task, data: list[SplitData], cfg: ValidateConfig, docs_dir: Path,
                docs: bool, suites_dir: Path) -> list[dict[str, Any]]:
    context = _context(docs_dir)
    source = context.data_sources.add_pandas(name=task.name)
    train = next((d for d in data if d.split == "train" and d.rows), None)
    train_inputs = sorted(split_frame(task, train)[INPUT_KEY].unique()) if train else None
    checks: list[dict[str, Any]] = []
    for d in data:
        file_suite = build_file_suite(task, d.split)
        _save_suite(file_suite, suites_dir)
        raws = _run_checkpoint(context, source, f"{d.split}.file", file_suite, problem_frame(d), ["line"], cfg)
        checks += [_check_record(task, r, {}) for r in raws]
        if d.path is None:
            continue  # missing split: nothing to validate beyond file_readable
        frame = split_frame(task, d)
        suite = build_suite(task, d.split, list(frame.columns), cfg, train_inputs)
        _save_suite(suite, suites_dir)
        index_columns = [LINE] + ([task.id_field] if task.id_field in frame.columns else [])
        raws = _run_checkpoint(context, source, d.split, suite, frame, index_columns, cfg,
                               {TRAIN_INPUTS: train_inputs or []})
        by_line = {r[LINE]: r for r in d.rows}
        checks += [_check_record(task, r, by_line) for r in raws]
    if docs:
        context.build_data_docs(site_names=["local"])
    return checks


def _save_suite(suite: Any, suites_dir: Path) -> Path:
    """The suite exactly as GX serialises it (the train-input keys stay a `$PARAMETER` reference)."""
    return write_json(suites_dir / f"{suite.name}.json", suite.to_json_dict())


def _report(task: Task, data_dir: Path, data: list[SplitData], cfg: ValidateConfig,
            checks: list[dict[str, Any]], docs: bool) -> dict[str, Any]:
    failed = [c for c in checks if not c["success"]]
    return {
        "task": task.name,
        "data": str(data_dir),
        "success": not failed,
        "thresholds": asdict(cfg),
        "splits": {d.split: {"file": str(d.path) if d.path else None, "rows": len(d.rows),
                             "unreadable_lines": len(d.problems),
                             "success": not any(c["split"] == d.split for c in failed)} for d in data},
        "statistics": {"evaluated_expectations": len(checks), "successful_expectations": len(checks) - len(failed),
                       "unsuccessful_expectations": len(failed)},
        "failed_checks": sorted({f"{c['split']}.{c['check']}" for c in failed}),
        "checks": checks,
        "data_docs": f"{DOCS_DIR}/index.html" if docs else None,
    }


def write_validated(task: Task, data_dir: Path, data: list[SplitData], output: Path, report_dir: Path) -> None:
    """Copy the validated split files, unchanged, into `output` (atomically) with a manifest of their md5s.

    Unchanged bytes under the task's own file names: training reads them with the same loader, and the
    hashes match the ones the report describes.
    """
    files = {}
    with atomic_dir(output) as tmp:
        for d in data:
            assert d.path is not None
            shutil.copy2(d.path, tmp / d.path.name)
            files[d.split] = {"file": d.path.name, "rows": len(d.rows),
                              "md5": file_md5(d.path)}
        write_json(tmp / MANIFEST, {"task": task.name, "source": str(data_dir), "splits": files,
                                    "report": str(report_dir / RESULT_FILE)})


def summary(report: dict[str, Any], limit: int = 3) -> str:
    """A short human summary: which expectation failed on which split, how many rows, a few examples."""
    checks = report["checks"]
    failed = [c for c in checks if not c["success"]]
    head = (f"{report['task']}: {'PASSED' if report['success'] else 'FAILED'} "
            f"{len(checks) - len(failed)}/{len(checks)} expectations")
    lines = [head]
    for c in failed:
        lines.append(f"  {c['split']}: {_describe(c, limit)}")
    return "\n".join(lines)


def _describe(c: dict[str, Any], limit: int) -> str:
    name = f"{c['check']} ({c['column']})" if c.get("column") else c["check"]
    if c.get("error"):
        return f"{name}: could not be evaluated: {c['error']}"
    if c["check"] == "file_readable":
        problems = [str(e.get("value")) for e in c.get("examples", [])]
        more = c.get("unexpected_count", len(problems)) - len(problems[:limit])
        return "file_readable: " + "; ".join(problems[:limit]) + (f" (+{more} more)" if more > 0 else "")
    if c["check"] == "class_share":
        return f"{name}: {c['description']}, observed {c.get('observed_share', 0):.1%}"
    if "unexpected_count" in c:
        shown = ", ".join(show_example(e) for e in c.get("examples", [])[:limit])
        return f"{name}: {c['unexpected_count']} of {c.get('element_count')} rows fail ({c['description']}); " \
               f"e.g. {shown}"
    observed = c.get("details") or c.get("observed_value")
    return f"{name}: {c['description']}; observed {json.dumps(observed, default=str)}"


def show_example(example: dict[str, Any]) -> str:
    """`line 4 idx 3 "maybe"`: one offending row as the summary and the validation page show it."""
    parts = [f"line {example.get('line')}"]
    if "id" in example:
        parts.append(f"idx {json.dumps(example['id'], default=str)}")
    if "value" in example:
        parts.append(json.dumps(_clip(example["value"], 60), default=str, ensure_ascii=False))
    return " ".join(parts)
