"""`softprompt registry show TASK`: versions over time from a real registry repo (git tags + DVC)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_registry import make_prompt, metrics, prompts, repo, settings  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from softprompt import registry
from softprompt.cli import app
from softprompt.errors import SoftpromptError
from softprompt.registry import history
from softprompt.registry.show import plot

pytestmark = pytest.mark.pipeline  # test_registry's built registry, real git + DVC (not in make test-fast)


def register_three(repo, settings, prompts, tmp_path):  # noqa: F811
    """v1 60 (production), v2 58 (below the gate), v3 70 (promoted), and a cb version that must not show."""
    for name, value in (("rte1", 60.0), ("rte2", 58.0), ("rte3", 70.0)):
        registry.register(repo, "rte", prompts[name], metrics(tmp_path, "rte", value), run_id=f"run-{name}",
                          settings=settings)
    registry.register(repo, "cb", prompts["cb1"], metrics(tmp_path, "cb", 80.0), settings=settings)


def test_show_lists_versions_metrics_data_run_and_stage(repo, settings, prompts, tmp_path):  # noqa: F811
    register_three(repo, settings, prompts, tmp_path)
    result = CliRunner().invoke(app, ["registry", "show", "rte", "--repo", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["version"], r["value"], r["run_id"], r["stage"]) for r in rows] == [
        ("v1", 60.0, "run-rte1", ""), ("v2", 58.0, "run-rte2", ""), ("v3", 70.0, "run-rte3", "prod")]
    assert rows[2]["metrics"] == {"accuracy": 70.0}  # the scores, not counts or settings
    assert rows[0]["data"] == "train.jsonl abc"  # the training files' md5s (no pipeline fingerprint here)
    assert rows[0]["registered_at"] <= rows[1]["registered_at"] <= rows[2]["registered_at"]

    table = CliRunner().invoke(app, ["registry", "show", "rte", "--repo", str(repo)]).output.splitlines()
    assert table[0].split() == ["version", "registered", "metrics", "data", "run", "id", "stage"]
    assert table[3].startswith("*  v3") and "accuracy=70" in table[3] and table[3].endswith("prod")
    assert not table[1].startswith("*") and "run-rte1" in table[1]


def test_show_plot_writes_the_main_score_per_version(repo, settings, prompts, tmp_path):  # noqa: F811
    register_three(repo, settings, prompts, tmp_path)
    plot = tmp_path / "out" / "rte.png"
    result = CliRunner().invoke(app, ["registry", "show", "rte", "--repo", str(repo), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 300
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 24)) > 20  # a drawn chart, not a blank image


def test_show_refuses_bad_input_and_writes_nothing(repo, settings, prompts, tmp_path):  # noqa: F811
    with pytest.raises(SoftpromptError, match="rte: no versions registered in .*softprompt registry register"):
        history(repo, "rte")
    with pytest.raises(SoftpromptError, match="--task 'RTE'"):
        history(repo, "RTE")
    register_three(repo, settings, prompts, tmp_path)
    with pytest.raises(SoftpromptError, match=r"--plot .*out.jpg: give a file name ending in \.png"):
        plot(history(repo, "rte"), tmp_path / "out.jpg")
    assert not (tmp_path / "out.jpg").exists()
