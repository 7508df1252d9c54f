"""`softprompt validate`: every expectation catches its defect on a small hand-made fixture; clean data passes.

Each broken fixture is the clean fixture with one defect, and the test asserts that exactly the expected
checks fail (and name the offending line), so a check that stops working or fires on clean data fails here.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from softprompt import metrics
from softprompt.errors import SoftpromptError
from softprompt.tasks.base import Task, get_task, glue_formatter
from softprompt.tasks.loading import load_rows
from softprompt.validation import ValidateConfig, summary, validate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CFG = ValidateConfig(min_rows=5, min_class_share=0.1, min_text_chars=1, max_text_chars=200, examples=3)
RTE = get_task("rte")
CBX = Task(  # a CB-like three-class task, gzipped files, defined here so the test does not depend on the registry
    name="cbx", description="CB-like fixture", fields={"premise": "str", "hypothesis": "str", "idx": "int",
                                                       "label": "label"},
    formatter=glue_formatter(), metric_fn=lambda p, e: {"accuracy": metrics.accuracy(p, [x.targets for x in e])},
    main_metric="accuracy", label_names=("entailment", "contradiction", "neutral"),
    files={"train": ("train.jsonl.gz",), "validation": ("val.jsonl.gz",), "test": ("test.jsonl.gz",)},
    text_fields=("premise", "hypothesis"),
)


def rows(n: int, start: int = 0, labels: tuple[str, ...] = ("entailment", "not_entailment"),
         labeled: bool = True) -> list[dict]:
    out = []
    for i in range(start, start + n):
        row = {"premise": f"Premise number {i} says the cat {i} sat.", "hypothesis": f"Cat {i} sat.", "idx": i - start}
        if labeled:
            row["label"] = labels[i % len(labels)]
        out.append(row)
    return out


def write(path: Path, data: list[dict] | list[str]) -> None:
    lines = [d if isinstance(d, str) else json.dumps(d) for d in data]
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)


def clean_rte(root: Path, test: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(root / "train.jsonl", rows(20))
    write(root / "val.jsonl", rows(10, start=100))
    if test:
        write(root / "test.jsonl", rows(8, start=200, labeled=False))
    return root


def failed(report: dict) -> set[str]:
    return set(report["failed_checks"])


def check(report: dict, name: str) -> dict:
    split, kind = name.split(".")
    return next(c for c in report["checks"] if c["split"] == split and c["check"] == kind and not c["success"])


def lines_of(c: dict) -> list:
    return [e["line"] for e in c.get("examples", [])]


# ---------------------------------------------------------------- clean data


def test_clean_fixture_passes_and_writes_canonical_dataset(tmp_path: Path) -> None:
    data = clean_rte(tmp_path / "rte", test=True)
    report = validate(RTE, data, tmp_path / "report", CFG, output=tmp_path / "out", docs=False)
    assert report["success"], summary(report)
    assert report["failed_checks"] == []
    assert {s: v["rows"] for s, v in report["splits"].items()} == {"train": 20, "validation": 10, "test": 8}
    kinds = {c["check"] for c in report["checks"]}
    assert {"file_readable", "min_rows", "column_exists", "known_columns", "not_null", "type", "label_in_set",
            "unique_id", "text_not_blank", "text_length", "no_leakage", "class_share"} <= kinds
    # The test split is unlabeled: no label checks there.
    assert not [c for c in report["checks"] if c["split"] == "test" and c["check"] in ("label_in_set", "class_share")]
    on_disk = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert on_disk["success"] is True and on_disk["statistics"]["unsuccessful_expectations"] == 0
    out = tmp_path / "out"
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (out / name).read_bytes() == (data / name).read_bytes()
    manifest = json.loads((out / "validated.json").read_text())
    assert manifest["task"] == "rte" and manifest["splits"]["train"]["rows"] == 20
    assert load_rows(RTE, out, "train") == load_rows(RTE, data, "train")  # training reads the canonical copy


# ---------------------------------------------------------------- one defect each

Mutation = Callable[[Path], None]


def edit_line(name: str, lineno: int, change: Callable[[dict], object]) -> Mutation:
    def mutate(root: Path) -> None:
        path = root / name
        data = [json.loads(x) for x in path.read_text().splitlines()]
        new = change(data[lineno - 1])
        if new is not None:
            data[lineno - 1] = new
        write(path, data)

    return mutate


def raw_line(name: str, lineno: int, raw: bytes) -> Mutation:
    def mutate(root: Path) -> None:
        path = root / name
        lines = path.read_bytes().splitlines()
        lines[lineno - 1] = raw
        path.write_bytes(b"\n".join(lines) + b"\n")

    return mutate


def set_field(field: str, value: object) -> Callable[[dict], None]:
    return lambda row: row.__setitem__(field, value)


def truncate(name: str) -> Mutation:
    def mutate(root: Path) -> None:
        path = root / name
        path.write_bytes(path.read_bytes()[:-25])  # cut mid-way through the last line

    return mutate


def rename_column(root: Path) -> None:
    write(root / "train.jsonl", [{("sentence2" if k == "hypothesis" else k): v for k, v in r.items()}
                                 for r in rows(20)])


def leak(root: Path) -> None:
    val = rows(10, start=100)
    val[4].update(premise=rows(20)[7]["premise"], hypothesis=rows(20)[7]["hypothesis"])
    write(root / "val.jsonl", val)


def degenerate(root: Path) -> None:
    train = rows(20)
    for r in train:
        r["label"] = "entailment"
    train[0]["label"] = "not_entailment"  # 5% < min_class_share 10%
    write(root / "train.jsonl", train)


DEFECTS: dict[str, tuple[Mutation, set[str], int | None, str | None]] = {
    # name: (mutation of the clean fixture, the checks that must fail, offending line, text in the summary)
    "invalid_json": (raw_line("train.jsonl", 3, b'{"premise": "a", '), {"train.file_readable"}, 3,
                     "train.jsonl:3: invalid JSON"),
    "not_an_object": (raw_line("train.jsonl", 3, b"[1, 2]"), {"train.file_readable"}, 3, "expected a JSON object"),
    "wrong_encoding": (raw_line("train.jsonl", 4, b'{"premise": "caf\xe9"}'), {"train.file_readable"}, 4,
                       "not UTF-8"),
    "truncated_file": (truncate("val.jsonl"), {"validation.file_readable"}, 10, "val.jsonl:10: invalid JSON"),
    "missing_split": (lambda root: (root / "val.jsonl").unlink(), {"validation.file_readable"}, None,
                      "missing the validation split"),
    "renamed_column": (rename_column, {"train.column_exists", "train.known_columns"}, None, "hypothesis"),
    "extra_column": (edit_line("train.jsonl", 2, set_field("source", "web")), {"train.known_columns"}, None,
                     "source"),
    "null_field": (edit_line("train.jsonl", 2, set_field("premise", None)), {"train.not_null"}, 2, "premise"),
    "missing_field": (edit_line("val.jsonl", 5, lambda r: {k: v for k, v in r.items() if k != "hypothesis"}),
                      {"validation.not_null"}, 5, "hypothesis"),
    "wrong_type": (edit_line("train.jsonl", 6, set_field("idx", "5")), {"train.type"}, 6, "idx"),
    "unknown_label": (edit_line("train.jsonl", 3, set_field("label", "maybe")), {"train.label_in_set"}, 3,
                      "maybe"),
    "duplicate_idx": (edit_line("train.jsonl", 5, set_field("idx", 1)), {"train.unique_id"}, 5, "unique_id"),
    "empty_text": (edit_line("train.jsonl", 7, set_field("premise", "")), {"train.text_not_blank",
                                                                         "train.text_length"}, 7, "premise"),
    "blank_text": (edit_line("train.jsonl", 7, set_field("hypothesis", "   \t")), {"train.text_not_blank"}, 7,
                   "hypothesis"),
    "nul_in_text": (edit_line("train.jsonl", 4, set_field("premise", "a NUL\x00 in it")),
                    {"train.text_control_chars"}, 4, "premise"),
    "escape_in_text": (edit_line("val.jsonl", 3, set_field("hypothesis", "\x1b[31mred\x1b[0m")),
                       {"validation.text_control_chars"}, 3, "hypothesis"),
    "list_field": (edit_line("train.jsonl", 3, set_field("premise", ["a", "b"])), {"train.type"}, 3, "premise"),
    "too_long_text": (edit_line("val.jsonl", 2, set_field("premise", "word " * 100)), {"validation.text_length"},
                      2, "premise"),
    "leakage": (leak, {"validation.no_leakage"}, 5, "no_leakage"),
    "too_few_rows": (lambda root: write(root / "val.jsonl", rows(3, start=100)), {"validation.min_rows"}, None,
                     "min_rows"),
    "degenerate_labels": (degenerate, {"train.class_share"}, None, "not_entailment"),
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_defect_is_caught_by_its_expectation(tmp_path: Path, name: str) -> None:
    mutate, expected, line, text = DEFECTS[name]
    data = clean_rte(tmp_path / "rte")
    mutate(data)
    report = validate(RTE, data, tmp_path / "report", CFG, output=tmp_path / "out", docs=False)
    assert not report["success"]
    assert failed(report) == expected, summary(report)
    if line is not None:
        assert any(line in lines_of(check(report, n)) for n in expected), summary(report)
    assert text in summary(report)
    assert not (tmp_path / "out").exists()  # nothing unvalidated reaches the canonical dataset
    assert json.loads((tmp_path / "report" / "validation.json").read_text())["success"] is False


def test_test_split_may_be_unlabeled_but_not_mislabeled(tmp_path: Path) -> None:
    data = clean_rte(tmp_path / "rte")
    test = [*rows(4, start=200, labeled=False), *({**r, "label": -1} for r in rows(2, 300)),
            {**rows(1, start=400)[0], "label": "maybe"}]
    write(data / "test.jsonl", [{**r, "idx": i} for i, r in enumerate(test)])
    report = validate(RTE, data, tmp_path / "report", CFG, docs=False)
    assert failed(report) == {"test.label_in_set"}
    assert lines_of(check(report, "test.label_in_set")) == [7]


def test_three_class_gzipped_task(tmp_path: Path) -> None:
    """A CB-like task with .jsonl.gz files: int/str labels pass, a rare class and a truncated gzip fail."""
    labels = CBX.label_names
    root = tmp_path / "cbx"
    root.mkdir()
    train = rows(20, labels=labels)
    train[1]["label"] = 0  # class ids are valid labels too
    write(root / "train.jsonl.gz", train)
    write(root / "val.jsonl.gz", rows(9, start=100, labels=labels))
    assert validate(CBX, root, tmp_path / "ok", CFG, docs=False)["success"]

    train = rows(20, labels=("entailment", "contradiction"))
    train[0]["label"] = "neutral"  # 1 of 20 = 5% < 10%
    write(root / "train.jsonl.gz", train)
    blob = (root / "val.jsonl.gz").read_bytes()
    (root / "val.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    report = validate(CBX, root, tmp_path / "bad", CFG, docs=False)
    # Nothing before the cut decompresses: the unreadable file is named, and its 0 rows fail min_rows.
    assert failed(report) == {"train.class_share", "validation.file_readable", "validation.min_rows"}
    share = check(report, "train.class_share")
    assert share["observed_share"] == 0.05 and "neutral" in share["description"]
    assert "truncated or corrupt" in summary(report)


# ---------------------------------------------------------------- the acceptance case


def test_four_defects_in_one_run_and_html_report(tmp_path: Path) -> None:
    data = clean_rte(tmp_path / "rte")
    for mutate in (edit_line("train.jsonl", 3, set_field("label", "maybe")),
                   edit_line("train.jsonl", 4, set_field("premise", None)),
                   edit_line("train.jsonl", 5, set_field("idx", 1)),
                   raw_line("train.jsonl", 6, b'{"premise": "broken')):
        mutate(data)
    report = validate(RTE, data, tmp_path / "report", CFG)
    assert failed(report) == {"train.label_in_set", "train.not_null", "train.unique_id", "train.file_readable"}
    text = summary(report)
    for needle in ("label_in_set (label)", '"maybe"', "not_null (premise)", "line 4", "unique_id (idx)",
                   "train.jsonl:6: invalid JSON"):
        assert needle in text
    assert check(report, "train.unique_id")["unexpected_count"] == 2
    assert report["splits"]["train"] == {"file": str(data / "train.jsonl"), "rows": 19, "unreadable_lines": 1,
                                         "success": False}
    docs = tmp_path / "report" / "data_docs"
    assert (docs / "index.html").is_file()
    page = next(docs.glob("validations/**/rte-train.html")).read_text()
    assert "values must belong to this set" in page and "maybe" in page  # the failed expectation, with its value
    assert "values must be unique" in page


# ---------------------------------------------------------------- CLI, config, import path

runner = CliRunner()


def test_cli_exit_codes_and_summary(tmp_path: Path) -> None:
    from softprompt.cli import app

    data = clean_rte(tmp_path / "rte")
    common = ["validate", "--task", "rte", "--data", str(data), "--min-rows", "5", "--no-docs"]
    ok = runner.invoke(app, [*common, "--report", str(tmp_path / "r1"), "--output", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "PASSED" in ok.output and (tmp_path / "out" / "train.jsonl").is_file()
    edit_line("train.jsonl", 3, set_field("label", "maybe"))(data)
    bad = runner.invoke(app, [*common, "--report", str(tmp_path / "r2"), "--output", str(tmp_path / "out")])
    assert bad.exit_code == 1
    assert "FAILED" in bad.output and "label_in_set" in bad.output
    assert (tmp_path / "out" / "train.jsonl").read_bytes() != (data / "train.jsonl").read_bytes()  # old copy kept
    only = runner.invoke(app, [*common, "--report", str(tmp_path / "r3"), "--split", "validation"])
    assert only.exit_code == 0 and set(json.loads((tmp_path / "r3" / "validation.json").read_text())["splits"]) \
        == {"validation"}


def test_cli_usage_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    from softprompt import cli

    monkeypatch.setattr(sys, "argv", ["softprompt", "validate", "--task", "rte", "--data", str(tmp_path / "nope"),
                                      "--report", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no such data directory" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_refuses_to_replace_foreign_directories(tmp_path: Path) -> None:
    data = clean_rte(tmp_path / "rte")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SoftpromptError, match="--report exists"):
        validate(RTE, data, precious, CFG, docs=False)
    with pytest.raises(SoftpromptError, match="--output exists"):
        validate(RTE, data, tmp_path / "r", CFG, output=data, docs=False)
    assert (precious / "notes.txt").read_text() == "keep me" and (data / "train.jsonl").is_file()


def test_tsv_task_names_the_bad_line(tmp_path: Path) -> None:
    tsv = Task(name="pairs", description="GLUE-like tsv fixture",
               fields={"sentence1": "str", "sentence2": "str", "label": "label", "idx": "str"},
               formatter=glue_formatter(), metric_fn=CBX.metric_fn, main_metric="accuracy", label_names=("0", "1"),
               files={"train": ("train.tsv",), "validation": ("dev.tsv",)}, text_fields=("sentence1", "sentence2"))
    root = tmp_path / "pairs"
    root.mkdir()
    for name, start in (("train.tsv", 0), ("dev.tsv", 100)):
        body = [f"First sentence {i}.\tSecond sentence {i}.\t{i % 2}\t{i}" for i in range(start, start + 8)]
        (root / name).write_text("sentence1\tsentence2\tlabel\tidx\n" + "\n".join(body) + "\n")
    assert validate(tsv, root, tmp_path / "ok", CFG, docs=False)["success"]
    with (root / "dev.tsv").open("a") as f:
        f.write("only one column\n")
    report = validate(tsv, root, tmp_path / "bad", CFG, docs=False)
    assert failed(report) == {"validation.file_readable"}
    assert "dev.tsv:10: 1 columns, header has 4" in summary(report)


def test_bad_thresholds_are_rejected() -> None:
    with pytest.raises(SoftpromptError, match="min_class_share"):
        ValidateConfig(min_class_share=1.5)
    with pytest.raises(SoftpromptError, match="max_text_chars"):
        ValidateConfig(min_text_chars=10, max_text_chars=5)


def test_unknown_split_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SoftpromptError, match="unknown split 'dev'"):
        validate(RTE, clean_rte(tmp_path / "rte"), tmp_path / "r", CFG, splits=["dev"], docs=False)


def test_great_expectations_stays_out_of_the_cli_import_path() -> None:
    code = "import sys, softprompt.cli; sys.exit('great_expectations' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---------------------------------------------------------------- real data


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "superglue" / "RTE").is_dir(), reason="../shared data not available")
def test_real_rte_passes(tmp_path: Path) -> None:
    report = validate("rte", SHARED / "superglue" / "RTE", tmp_path / "v", docs=False)
    assert report["success"], summary(report)
    assert report["splits"]["train"]["rows"] == 2490
