"""`dvc metrics show`, `dvc plots show` and `dvc plots diff` read what `dvc repro` wrote
(docs/registry.md: "Reproduce a prompt with `dvc repro`")."""

from __future__ import annotations

import json
from collections import Counter

from clients.conftest import TASK

LOSS, CONFUSION = f"metrics/{TASK}.loss.csv", f"metrics/{TASK}.confusion.json"


def plots(project, *args: str) -> dict[str, dict]:
    """`dvc plots show|diff ... --json`: plot id -> the filled Vega-Lite spec of its one renderer."""
    shown = json.loads(project.run("dvc", "plots", *args, "--json"))["data"]
    assert all(len(renderers) == 1 and renderers[0]["type"] == "vega" for renderers in shown.values()), shown
    return {plot_id: renderers[0] for plot_id, renderers in shown.items()}


def test_dvc_metrics_show_reads_the_evaluation_metrics(project):
    shown = json.loads(project.run("dvc", "metrics", "show", "--json"))
    metrics = shown[""]["data"][f"metrics/{TASK}.json"]["data"]
    written = json.loads((project.root / f"metrics/{TASK}.json").read_text())
    assert metrics["task"] == TASK and metrics["main_metric"] == "score"  # RTE: score = accuracy
    assert metrics["score"] == written["score"] == written["accuracy"]
    assert metrics["accuracy"] == written["accuracy"] and metrics["num_examples"] == 8


def test_dvc_plots_show_draws_the_confusion_matrix_and_the_loss_curve(project):
    shown = plots(project, "show")
    assert set(shown) == {LOSS, CONFUSION}

    confusion = shown[CONFUSION]["content"]
    assert confusion["spec"]["encoding"]["x"]["field"] == "predicted"  # DVC's confusion template
    assert confusion["spec"]["encoding"]["y"]["field"] == "actual"
    cells = Counter((v["actual"], v["predicted"]) for v in confusion["data"]["values"])
    matrix = json.loads((project.root / f"metrics/{TASK}.json").read_text())["confusion_matrix"]
    expected = Counter({(actual, predicted): n for actual, row in zip(matrix["labels"], matrix["matrix"])
                        for predicted, n in zip(matrix["labels"], row) if n})
    assert cells == expected and sum(cells.values()) == 8  # the plot counts what the metrics count

    loss = shown[LOSS]["content"]
    assert loss["encoding"]["x"]["field"] == "step"
    curve = [(int(v["step"]), float(v["loss"])) for v in loss["data"]["values"]]
    meta = json.loads((project.root / f"prompts/{TASK}/softprompt.json").read_text())
    assert curve == [(h["step"], h["loss"]) for h in meta["loss_curve"]]
    assert [s for s, _ in curve] == list(range(1, meta["steps_trained"] + 1))


def test_dvc_plots_diff_overlays_two_experiments(project):
    diffed = plots(project, "diff", "HEAD")
    for plot_id in (LOSS, CONFUSION):
        assert diffed[plot_id]["revisions"] == ["workspace", "HEAD"]
    values = diffed[LOSS]["content"]["data"]["values"]
    by_rev = {rev: [float(v["loss"]) for v in values if v["rev"] == rev] for rev in ("workspace", "HEAD")}
    assert len(by_rev["workspace"]) == len(by_rev["HEAD"]) == 6
    assert by_rev["workspace"] != by_rev["HEAD"]  # another seed, another curve


def test_dvc_plots_show_writes_the_html_page(project, tmp_path):
    out = tmp_path / "plots"
    project.run("dvc", "plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    assert page.count("vegaEmbed(") == 2 and f"{TASK} confusion matrix" in page and f"{TASK} training loss" in page
