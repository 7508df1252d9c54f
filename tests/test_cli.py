"""The CLI end to end, as a user runs it: subprocesses, exit codes, one-line errors, files written."""

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import typer
from conftest import REPO
from peft import PeftModel
from typer.testing import CliRunner

from softprompt.config import (
    EvalMode,
    RegistryConfig,
    TrainConfig,
    ValidateConfig,
    help_of,
    load_params,
    param_value,
)
from softprompt.models import load_base

CLI = [sys.executable, "-m", "softprompt.cli"]


def run(*args, ok=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    if ok:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_train_then_evaluate_generate_and_rank(rte_dir, tmp_path):
    out = tmp_path / "prompt"
    proc = run("train", "--task", "rte", "--model", "tiny", "--data", rte_dir, "--steps", "4", "--batch-size", "4",
               "--prompt-length", "5", "--eval-every", "2", "--output", out)
    summary = json.loads(proc.stdout[:proc.stdout.rindex("}") + 1])
    assert summary["prompt_length"] == 5 and summary["steps_trained"] == 4
    assert PeftModel.from_pretrained(load_base("tiny").model, str(out)) is not None
    for mode in ("generate", "rank"):
        metrics = tmp_path / f"{mode}.json"
        run("evaluate", "--task", "rte", "--prompt", out, "--data", rte_dir, "--mode", mode, "--output", metrics)
        result = json.loads(metrics.read_text())
        assert result["num_examples"] == 8 and 0 <= result["accuracy"] <= 100 and result["mode"] == mode
        assert sum(map(sum, result["confusion_matrix"]["matrix"])) == 8
        preds = (tmp_path / f"{mode}.predictions.jsonl").read_text().splitlines()
        assert len(preds) == 8 and {"idx", "inputs", "targets", "prediction"} <= json.loads(preds[0]).keys()
    rank = json.loads((tmp_path / "rank.json").read_text())
    assert rank["confusion_matrix"]["matrix"][-1] == [0, 0, 0]  # rank mode always answers with a label


def test_prompt_design_baseline_needs_no_training(rte_dir, tmp_path):
    run("evaluate", "--task", "rte", "--method", "design", "--model", "tiny", "--data", rte_dir, "--mode", "rank",
        "--output", tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["method"] == "design"


@pytest.mark.slow
def test_design_is_described_as_a_zero_shot_instruction_and_takes_shots(rte_dir, tmp_path):
    """--method design is a zero-shot instruction to the frozen T5 (not the paper's GPT-3 few-shot); --shots K
    puts K training examples, fixed by --seed, in front of every input."""
    text = " ".join(run("evaluate", "--help").stdout.replace("│", " ").split())  # unwrap rich's help boxes
    assert "zero-shot text instruction to the frozen T5" in text and "GPT-3" in text and "--shots" in text
    outputs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run("evaluate", "--task", "rte", "--method", "design", "--model", "tiny", "--data", rte_dir, "--mode", "rank",
            "--shots", "3", "--seed", seed, "--limit", "2", "--output", tmp_path / f"{name}.json")
        outputs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert outputs["a"]["shots"] == 3 and len(outputs["a"]["shot_ids"]) == 3
    assert outputs["a"]["shot_ids"] == outputs["b"]["shot_ids"] != outputs["c"]["shot_ids"]
    proc = run("evaluate", "--task", "rte", "--method", "model", "--model", "tiny", "--data", rte_dir, "--shots", "2",
               "--output", tmp_path / "x.json", ok=False)
    assert proc.returncode == 2 and "--shots applies to --method design only" in proc.stderr


def test_shots_go_before_the_input_which_truncation_never_cuts():
    from softprompt.evaluation import Encoding
    from softprompt.tasks.base import Example

    tok = load_base("tiny").tokenizer
    shots = [Example(i, f"rte hypothesis: h{i}. premise: p{i}.", "entailment") for i in range(2)]
    enc = Encoding(tok, 512, 16, instruction="Does it follow?", demonstrations=shots)
    ids = enc.source_ids(["rte hypothesis: H. premise: P."])["input_ids"][0]
    assert tok.decode(ids, skip_special_tokens=True) == (
        "Does it follow? rte hypothesis: h0. premise: p0. answer: entailment rte hypothesis: h1. premise: p1. "
        "answer: entailment rte hypothesis: H. premise: P. answer:")
    enc.max_source_length = 45  # room for the input (38 bytes + EOS), not for the demonstrations
    short = tok.decode(enc.source_ids(["rte hypothesis: H. premise: P."])["input_ids"][0], skip_special_tokens=True)
    assert short.endswith("rte hypothesis: H. premise: P. answer:")
    assert tok.truncation_side == "right"  # restored for everything else


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "rte", "--model", "tiny", "--data", "/nonexistent", "--output", "/tmp/x"],
     "no such data directory"),
    (["evaluate", "--task", "rte", "--prompt", "/nonexistent", "--output", "/tmp/x.json"], "no such prompt directory"),
    (["train", "--task", "rte", "--model", "tiny", "--profile", "huge", "--output", "/tmp/x"], "unknown profile"),
])
def test_errors_are_one_line_and_exit_non_zero(args, message):
    proc = run(*args, ok=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0]


def test_ctrl_c_exits_130_and_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import softprompt.training
    from softprompt import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(softprompt.training, "train", interrupted)
    monkeypatch.setattr(sys, "argv", ["softprompt", "train", "--task", "rte", "--model", "tiny",
                                      "--output", str(tmp_path / "p")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 130
    assert "rerun the same command to resume from the last checkpoint" in capsys.readouterr().err


def test_unreadable_params_yaml_is_one_error_line(tmp_path):
    missing = tmp_path / "params.yaml"
    proc = subprocess.run([*CLI, "tasks"], capture_output=True, text=True, cwd=REPO,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "SOFTPROMPT_PARAMS": str(missing)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {missing}: cannot read params") and proc.stderr.count("\n") == 1


def test_help_explains_every_command():
    top = run("--help").stdout
    for command in ("train", "evaluate", "tasks"):
        assert command in top
    assert "--prompt-length" in run("train", "--help").stdout


def click_options(application) -> list[tuple[str, Any]]:
    """(command path, option) of every option of a typer app, subcommands included (typer builds them with its
    own copy of click, so they are told apart by what they have, not by click's classes)."""

    def walk(command: Any, path: str):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield from ((path, p) for p in command.params if p.param_type_name == "option")

    return list(walk(typer.main.get_command(application), ""))


SHOWN = re.compile(r"^(?P<value>.*), params\.yaml (?P<path>[\w.]+)$")


@pytest.mark.parametrize("application", ["softprompt.cli", "softprompt.cluster", "pipelines.run"])
def test_option_defaults_are_params_yaml_values(application):
    """Every option with a default shows params.yaml's value and path, and is unset (None) until the command
    reads params.yaml (or --profile's value); no option holds a default typed in the code."""
    import importlib

    params = load_params()
    documented = []
    for command, option in click_options(importlib.import_module(application).app):
        where = f"{application} {command} {option.opts[0]}"
        match = SHOWN.match(option.show_default) if isinstance(option.show_default, str) else None
        if match:
            value = param_value(match["path"], params)
            assert match["value"] == ("''" if value == "" else str(value)), where
            assert option.default is None, where
            documented.append(where)
        elif not option.is_flag and option.default is not None:
            assert (application, option.name) == ("pipelines.run", "spec"), f"{where} defaults to {option.default!r}"
    assert len(documented) >= {"softprompt.cli": 40, "softprompt.cluster": 0, "pipelines.run": 6}[application]


def test_help_is_the_config_fields_own_text():
    from softprompt.cli import app

    options = {(c, o.opts[0]): o for c, o in click_options(app)}
    assert options[("train", "--steps")].help == help_of(TrainConfig, "steps")
    assert options[("validate", "--min-rows")].help == help_of(ValidateConfig, "min_rows")
    assert options[("registry promote", "--margin")].help == help_of(RegistryConfig, "promotion_margin")
    assert options[("registry promote", "--margin")].show_default == (
        f"{load_params()['registry']['promotion_margin']}, params.yaml registry.promotion_margin")
    # The choices are the vocabulary's enum: a value outside it is refused, naming each choice.
    refused = CliRunner().invoke(app, ["evaluate", "--task", "rte", "--output", "x.json", "--mode", "bogus"])
    assert refused.exit_code == 2 and all(f"'{m.value}'" in refused.output for m in EvalMode), refused.output


def test_registry_commands_are_one_group():
    text = run("registry", "--help").stdout
    for command in ("register", "promote", "pull", "list"):
        assert re.search(rf"^\W*{command}\s", text, re.M), command
    for old in ("register", "promote", "pull"):  # one shape: no top-level copies
        proc = run(old, "--help", ok=False)
        assert proc.returncode == 2 and "No such command" in proc.stderr
