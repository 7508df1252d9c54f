"""Inference on XLA's CPU device: `make test-xla` runs this in .venv-xla with PJRT_DEVICE=CPU, where
`softprompt.device` must choose `xla:0` in bf16 by itself (no GPU, torch_xla importable, PJRT_DEVICE set) and
every inference path must then run there: the base's weights, the prompts, the ids and masks. Without torch_xla
(the main venv, `make test`) it is skipped.

Each check runs in a subprocess: starting the XLA runtime in pytest's own process would make the training tests'
`torch_xla.launch` (tests/xla/test_xla_training.py) fail afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed: run `make test-xla`")

from support.registry import ENV, make_prompt  # noqa: E402 (after the skip)

XLA_BF16 = {"device": "xla:0", "dtype": "bfloat16"}

# The serving engine on the placement `choose_placement()` makes here: where its tensors are, and its answers.
ENGINE = r"""
import json, sys
import torch
from softprompt.device import choose_placement
from softprompt.models import load_base
from softprompt.serving.engine import PromptSet, Row, load_served_prompt

placement = choose_placement()
base = load_base("tiny", placement=placement)
snapshot = PromptSet(base, {"boolq": load_served_prompt(base, "boolq", sys.argv[1], "v1")})
fields = {"question": "is the sky blue", "passage": "The sky is blue on a clear day."}
answers = snapshot.run([Row("boolq", fields), Row("boolq", fields, mode="rank")])
print(json.dumps({"placement": placement.to_json(),
                  "weights": sorted({f"{p.device} {p.dtype}" for p in base.model.parameters()}),
                  "prompts": f"{snapshot.ensemble.prompts.device} {snapshot.ensemble.prompts.dtype}",
                  "answers": answers}))
"""


def test_xla_is_chosen_only_where_pjrt_device_names_a_runtime(monkeypatch):
    from softprompt.device import xla_ready

    assert xla_ready()  # torch_xla here, PJRT_DEVICE=CPU from `make test-xla`
    monkeypatch.delenv("PJRT_DEVICE")
    assert not xla_ready()  # torch_xla installed but no runtime named: auto falls back to the CPU


def run(args: list[str]) -> str:
    proc = subprocess.run(args, env={**ENV, "PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU")},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_serving_engine_places_everything_on_xla_in_bf16(tmp_path: Path):
    # boolq: its labels are short, so generation (a compiled graph per decoding step on XLA) stops after 8 steps.
    prompt = make_prompt(tmp_path / "p", "boolq", seed=0)
    out = json.loads(run([sys.executable, "-c", ENGINE, str(prompt)]).strip().splitlines()[-1])
    print(f"\nengine on XLA: {json.dumps({k: out[k] for k in ('placement', 'weights', 'prompts')})}")
    assert out["placement"] == XLA_BF16
    assert out["weights"] == ["xla:0 torch.bfloat16"] and out["prompts"] == "xla:0 torch.bfloat16"
    generated, ranked = out["answers"]
    assert generated["task"] == ranked["task"] == "boolq" and isinstance(generated["label"], str)
    assert set(ranked["scores"]) == {"False", "True"} and ranked["label"] in ranked["scores"]


def test_evaluate_runs_on_xla_and_records_it(rte_dir: Path, tmp_path: Path):
    # Rank mode: one forward pass, compiled once. Generation on XLA compiles a graph per decoding step (the
    # engine test above covers it); through evaluate it took over 15 minutes on a loaded 2-core machine.
    prompt = make_prompt(tmp_path / "p", "rte", seed=0)
    metrics = tmp_path / "rank.json"
    run([sys.executable, "-m", "softprompt.cli", "evaluate", "--task", "rte", "--prompt", str(prompt),
         "--data", str(rte_dir), "--mode", "rank", "--limit", "4", "--output", str(metrics)])
    result = json.loads(metrics.read_text())
    print(f"evaluate --mode rank on XLA: device {result['device']}, dtype {result['dtype']}, "
          f"{result['main_metric']} = {result[result['main_metric']]} over {result['num_examples']} examples")
    assert {k: result[k] for k in XLA_BF16} == XLA_BF16
    assert result["num_examples"] == 4 and 0.0 <= result[result["main_metric"]] <= 100.0
