"""The self-contained HTML pages the pipeline's steps hand to the Kubeflow UI: content, escaping, no external
URL, and a real render in headless Chromium."""

from __future__ import annotations

import base64
import io
import re

import pytest
from browser import assert_renders, external_urls
from PIL import Image

from softprompt import report

TRAIN_META = {
    "task": "rte", "base_model": "tiny", "prompt_length": 20, "init": "class-label", "train": {"seed": 3, "steps": 30},
    "loss_curve": [{"step": s, "loss": 5.0 - s / 10} for s in (3, 6, 9, 12, 15, 18, 21, 24, 27, 30)],
    "validation_curve": [{"step": 15, "score": 40.0, "accuracy": 40.0}, {"step": 30, "score": 55.0, "accuracy": 55.0}],
}
EVAL = {"task": "rte", "split": "validation", "mode": "generate", "main_metric": "score", "score": 60.0,
        "accuracy": 60.0, "num_examples": 10, "best_prompt": 1, "per_prompt": [50.0, 60.0],
        "ensemble": {"accuracy": 70.0, "score": 70.0},
        "confusion_matrix": {"labels": ["entailment", "not_entailment", "<other>"],
                             "matrix": [[3, 1, 1], [1, 3, 1], [0, 0, 0]]}}
VALIDATION = {
    "task": "rte", "success": False,
    "statistics": {"evaluated_expectations": 3, "successful_expectations": 2, "unsuccessful_expectations": 1},
    "splits": {"train": {"file": "/d/train.jsonl", "rows": 40, "unreadable_lines": 0, "success": False},
               "validation": {"file": "/d/val.jsonl", "rows": 32, "unreadable_lines": 0, "success": True}},
    "checks": [
        {"split": "train", "check": "min_rows", "column": None, "expectation": "expect_table_row_count_to_be_between",
         "description": "at least 32 rows", "success": True, "observed_value": 40},
        {"split": "train", "check": "label_in_set", "column": "label", "success": False,
         "expectation": "expect_column_values_to_be_in_set", "description": "'label' is one of entailment, ...",
         "unexpected_count": 1, "element_count": 40, "examples": [{"line": 3, "id": 2, "value": "<b>maybe</b>"}]},
        {"split": "validation", "check": "unique_id", "column": "idx", "success": True,
         "expectation": "expect_column_values_to_be_unique", "description": "'idx' is unique",
         "unexpected_count": 0, "element_count": 32},
    ]}


def images(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_training_page_plots_loss_and_validation_and_lists_the_summary():
    page = report.training_page(TRAIN_META, {"best_step": 30, "best_validation_score": 55.0, "final_loss": 2.0})
    pictures = images(page)
    assert len(pictures) == 2 and all(p.width > 300 and p.height > 150 for p in pictures)
    assert "Training loss" in page and "Validation score" in page and "<td>best_step</td>" in page
    assert "rte: training (seed 3)" in page and external_urls(page) == []


def test_training_page_without_validation_says_so():
    page = report.training_page({**TRAIN_META, "validation_curve": []}, {})
    assert len(images(page)) == 1 and "No validation split" in page


def test_lm_adapt_page_plots_both_losses():
    meta = {"base_model": "tiny", "objective": "prefix-lm", "loss_curve": [{"step": 1, "loss": 9.0},
                                                                           {"step": 2, "loss": 8.0}],
            "validation_loss_curve": [{"step": 2, "loss": 8.5}]}
    page = report.lm_adapt_page(meta, {"validation_loss_before": 9.1, "validation_loss_after": 8.5})
    assert len(images(page)) == 1 and "validation_loss_after" in page and "8.5" in page


def test_non_label_share_is_the_other_column():
    assert report.non_label_share(EVAL["confusion_matrix"]) == pytest.approx(2 / 10)
    assert report.non_label_share({"labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]}) == 0.0


def test_wrong_predictions_keeps_twenty_labeled_mistakes():
    rows = [{"idx": i, "inputs": f"x{i}", "targets": "t" if i != 3 else "<unk>", "prediction": "p",
             "correct": i % 5 == 0} for i in range(40)]
    wrong = report.wrong_predictions(rows)
    assert len(wrong) == 20 and all(not r["correct"] and r["targets"] == "t" for r in wrong)
    assert [r["idx"] for r in wrong[:3]] == [1, 2, 4]


def test_evaluation_page_scores_confusion_share_and_wrong_rows():
    wrong = [{"idx": 7, "inputs": "rte premise: <script>alert(1)</script>", "targets": "entailment",
              "prediction": "maybe"}]
    page = report.evaluation_page(EVAL, wrong)
    assert len(images(page)) == 2  # the scores beside the ensemble, the confusion matrix
    assert "<td>prompt 0</td><td class=\"num\">50</td>" in page and "<td>ensemble</td><td class=\"num\">70</td>" in page
    assert "Outputs that were not a label: 20.0%" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page  # escaped, never run
    assert "<td>maybe</td>" not in page and ">maybe</td>" in page


def test_validation_page_lists_every_expectation_failures_first():
    page = report.validation_page(VALIDATION)
    assert "FAILED: 2 of 3 expectations met" in page
    rows = re.findall(r"<tr><td>(train|validation)</td><td>(\w+)</td>", page)
    assert [check for _, check in rows] == ["label_in_set", "min_rows", "unique_id"]  # failure first
    assert "1 of 40" in page and 'line 3 idx 2 &quot;&lt;b&gt;maybe&lt;/b&gt;&quot;' in page


def test_external_url_check_catches_what_a_browser_would_fetch():
    assert external_urls('<img src="data:image/png;base64,AAAA">') == []
    for bad in ('<script src="https://cdn.example/x.js"></script>', '<link rel="stylesheet" href="s.css">',
                '<a href="//example.com/p">', "<style>body{background:url(http://x/y.png)}</style>",
                '<img src=https://x/y.png>'):
        assert external_urls(bad), bad


@pytest.mark.browser
@pytest.mark.parametrize("name", ["training", "evaluation", "validation"])
def test_each_page_renders_in_headless_chromium(name, tmp_path):
    page = {"training": lambda: report.training_page(TRAIN_META, {"best_step": 30}),
            "evaluation": lambda: report.evaluation_page(EVAL, []),
            "validation": lambda: report.validation_page(VALIDATION)}[name]()
    path = report.write_page(tmp_path / f"{name}.html", page)
    assert_renders(path, tmp_path / f"{name}.png")
