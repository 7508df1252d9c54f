"""Training under torchrun: 2 CPU processes (gloo) give the 1-process prompt, and only rank 0 writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt import distributed

BIN = Path(sys.executable).parent
# Float32 sums of the same terms in another order (each rank sums its half-batch's token losses and gloo adds
# the halves; one process adds them in one pass) differ by a few ulps (~1e-7 relative). Adafactor's update is
# the gradient over the root of its second moment, so a relative gradient error stays relative, and 4 steps at
# the paper's lr 0.3 cannot grow 1e-7 past 1e-5 on prompt values of order 0.1-1. A wrongly weighted loss (a mean
# of the ranks' means) or another batch split moves the prompt by 1e-3 or more.
PROMPT_ATOL = 1e-5
LOSS_RTOL = 1e-5


def run_train(args: list[str], cwd: Path, processes: int) -> subprocess.CompletedProcess:
    launcher = ([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 ranks on 2 cores: no oversubscription
    proc = subprocess.run([*launcher, str(BIN / "softprompt"), "train", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def prompt(path: Path) -> torch.Tensor:
    (tensor,) = load_file(path / "adapter_model.safetensors").values()
    return tensor


def loss_rows(path: Path) -> list[tuple[int, float]]:
    with path.open() as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_gloo_processes_train_the_one_process_prompt_and_rank0_writes_once(rte_dir, tmp_path):
    common = ["--task", "rte", "--model", "tiny", "--data", str(rte_dir), "--steps", "4", "--batch-size", "8",
              "--prompt-length", "4", "--eval-every", "2", "--seed", "3"]
    run_train([*common, "--output", "one", "--loss-history", "one.csv"], tmp_path, 1)
    two = run_train([*common, "--output", "two", "--loss-history", "two.csv"], tmp_path, 2)

    assert torch.allclose(prompt(tmp_path / "two"), prompt(tmp_path / "one"), rtol=0, atol=PROMPT_ATOL)
    one_loss, two_loss = loss_rows(tmp_path / "one.csv"), loss_rows(tmp_path / "two.csv")
    assert [s for s, _ in two_loss] == [s for s, _ in one_loss] == [1, 2, 3, 4]
    assert [x for _, x in two_loss] == pytest.approx([x for _, x in one_loss], rel=LOSS_RTOL)

    meta_one = json.loads((tmp_path / "one" / "softprompt.json").read_text())
    meta = json.loads((tmp_path / "two" / "softprompt.json").read_text())
    assert meta["placement"]["processes"] == 2 and meta_one["placement"]["processes"] == 1
    assert meta["placement"]["batch_per_process"] == 4  # the global batch of 8, split over the 2 ranks
    assert meta["steps_trained"] == 4
    # sharded evaluation gathered back: all 8 validation examples scored, and the same best step chosen
    assert [r["step"] for r in meta["validation_curve"]] == [2, 4]
    assert meta["metrics"]["validation"]["num_examples"] == 8
    assert meta["best_step"] == meta_one["best_step"]
    # one writer: one TensorBoard run, one report on stdout, no leftover temporary or checkpoint directories
    (run,) = (tmp_path / "two" / "runs").iterdir()
    assert len([f for f in run.iterdir() if f.name.startswith("events.out.tfevents.")]) == 1
    assert two.stdout.count("wrote two") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RTE", "one", "one.csv", "two", "two.csv"]


def test_without_a_process_group_shard_and_unshard_are_the_identity():
    items = list(range(5))
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(items) == items and distributed.unshard(items) == items
    assert distributed.broadcast("x") == "x"
