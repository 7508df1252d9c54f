"""The TPU path on XLA's CPU device: `make test-xla` runs this in .venv-xla (torch + torch-xla 2.9.0, the TPU
image's pins) with PJRT_DEVICE=CPU. Without torch_xla (the main venv, `make test`) it is skipped.

Prompt training and LM adaptation go through the same code as on a TPU host: `torch_xla.launch` starts one
process per XLA device (here one), the Hugging Face Trainer trains on `xla:0` in bf16 autocast with
static shapes, and chip 0's process writes the output. The prompt it writes must then load and evaluate in
the main venv, which has no torch_xla.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed: run `make test-xla`")

from test_lm_adapt import small_cfg, write_corpus  # noqa: E402 (after the skip)

from softprompt import xla  # noqa: E402
from softprompt.config import PromptConfig, TrainConfig  # noqa: E402
from softprompt.lm_adapt import lm_adapt  # noqa: E402
from softprompt.training import final_loss_drop, train  # noqa: E402

STEPS = 40


def check_ran_on_xla(meta: dict, frozen: bool) -> dict:
    """Training's record of where it ran: every weight an XLA tensor on XLA's CPU device, bf16, one process."""
    where = meta["placement"]
    print(f"\nplacement: {json.dumps(where)}")
    assert where["xla_device_type"] == "CPU" == os.environ["PJRT_DEVICE"]
    assert where["trainable"] == ["xla:0"], where
    assert where["frozen"] == (["xla:0"] if frozen else []), where
    assert where["processes"] == 1 and where["bf16"] is True
    # Static shapes: the training step compiles a few graphs once, not one per batch shape.
    assert 0 < where["xla_compilations"] < STEPS, where
    return where


def test_xla_is_what_this_venv_trains_on():
    assert xla.available() and xla.device_type() == "CPU"


def test_prompt_trains_on_xla_and_evaluates_in_the_main_venv(rte_dir: Path, tmp_path: Path):
    out = tmp_path / "prompt"
    meta = train("rte", "tiny", rte_dir, out, PromptConfig(length=8),
                 TrainConfig(steps=STEPS, batch_size=8, eval_every=STEPS, max_source_length=64, max_target_length=8,
                             seed=0), progress=False)
    check_ran_on_xla(meta, frozen=True)
    curve = meta["loss_curve"]
    print(f"prompt training on XLA: loss {curve[0]['loss']:.4f} (step {curve[0]['step']}) -> "
          f"{curve[-1]['loss']:.4f} (step {curve[-1]['step']})")
    assert meta["steps_trained"] == STEPS and final_loss_drop(meta) > 0.1 * curve[0]["loss"]
    assert json.loads((out / "softprompt.json").read_text())["placement"] == meta["placement"]

    # The prompt loads and evaluates where there is no torch_xla.
    main = Path(os.environ["SOFTPROMPT_MAIN_PYTHON"]).parent
    metrics = tmp_path / "metrics.json"
    env = {k: v for k, v in os.environ.items() if k != "PJRT_DEVICE"} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(main / "softprompt"), "evaluate", "--task", "rte", "--prompt", str(out),
                           "--data", str(rte_dir), "--split", "validation", "--output", str(metrics)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = subprocess.run([str(main / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch_xla'))"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "None", "the main venv must not have torch_xla"
    result = json.loads(metrics.read_text())
    print(f"main venv evaluated the XLA-trained prompt: {result['main_metric']} = {result[result['main_metric']]}, "
          f"{result['num_examples']} examples")
    assert result["num_examples"] == 8 and 0.0 <= result[result["main_metric"]] <= 100.0


def test_lm_adaptation_runs_on_xla_and_lowers_the_loss(tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus" / "text.txt", lines=300)
    cfg = small_cfg(steps=STEPS, eval_every=STEPS, shuffle_buffer=0)
    meta = lm_adapt("tiny", str(corpus.parent), tmp_path / "lm", cfg, progress=False)
    check_ran_on_xla(meta, frozen=False)
    before, after = meta["validation_loss_before"], meta["validation_loss_after"]
    print(f"LM adaptation on XLA: validation loss {before:.4f} -> {after:.4f} over {meta['steps_trained']} steps")
    assert meta["steps_trained"] == STEPS and after < before
    assert (tmp_path / "lm" / "model.safetensors").is_file()
