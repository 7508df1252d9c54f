"""Great Expectations reopens the expectation suites `softprompt validate` saved (docs/validation.md: "Outputs")."""

from __future__ import annotations

import json

import great_expectations as gx
import great_expectations.expectations as gxe

from clients.conftest import TASK


def test_gx_reopens_the_saved_suites(project):
    report_dir = project.root / f"reports/validate/{TASK}"
    report = json.loads((report_dir / "validation.json").read_text())
    gx.get_context(mode="ephemeral")  # GX suites need an active data context
    for split in ("train", "validation"):
        saved = json.loads((report_dir / f"expectations/{TASK}.{split}.json").read_text())
        suite = gx.ExpectationSuite(**saved)
        assert suite.name == f"{TASK}.{split}"
        checks = [c["check"] for c in report["checks"] if c["split"] == split and c["check"] != "file_readable"]
        assert sorted(e.meta["check"] for e in suite.expectations) == sorted(checks)
        min_rows = next(e for e in suite.expectations if e.meta["check"] == "min_rows")
        assert isinstance(min_rows, gxe.ExpectTableRowCountToBeBetween) and min_rows.min_value == 8  # params
        file_suite = gx.ExpectationSuite(**json.loads((report_dir / f"expectations/{TASK}.{split}.file.json")
                                                      .read_text()))
        assert [e.meta["check"] for e in file_suite.expectations] == ["file_readable"]
    leakage = next(e for e in gx.ExpectationSuite(**json.loads(
        (report_dir / f"expectations/{TASK}.validation.json").read_text())).expectations
        if e.meta["check"] == "no_leakage")
    assert leakage.value_set == {"$PARAMETER": "train_input_keys"}  # a suite parameter, not thousands of keys
