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
# the paper's lr 0.3 cannot grow 1e-7 past 1e-5 on prompt values of order 0.1-1 (measured: 9.6e-7). A wrongly
# weighted loss (the mean of the ranks' per-batch means, as T5's loss gives) moved it by 0.73.
PROMPT_ATOL = 1e-5
LOSS_RTOL = 1e-5


def run_cli(args: list[str], cwd: Path, processes: int) -> subprocess.CompletedProcess:
    """`softprompt ARGS`, as one process or under torchrun with `processes` CPU ranks (gloo)."""
    launcher = ([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 ranks on 2 cores: no oversubscription
    proc = subprocess.run([*launcher, str(BIN / "softprompt"), *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_train(args: list[str], cwd: Path, processes: int) -> subprocess.CompletedProcess:
    return run_cli(["train", *args], cwd, processes)


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


def _shard_roundtrip(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        items = list(range(7))  # 7 over 2 ranks: 4 and 3
        mine = distributed.shard(items)
        gathered = distributed.unshard([f"p{i}" for i in mine])
        chosen = distributed.broadcast(f"rank{rank}")
        Path(out, f"{rank}.json").write_text(json.dumps({"mine": mine, "gathered": gathered, "chosen": chosen}))
    finally:
        dist.destroy_process_group()


def test_shard_unshard_and_broadcast_over_a_gloo_group(tmp_path):
    """Sharded evaluation's building blocks on 2 real gloo ranks, with shares of unequal size: every rank gets
    the predictions back in the original order, and rank 0's value."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_shard_roundtrip, args=(2, port, str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert [r["mine"] for r in results] == [[0, 2, 4, 6], [1, 3, 5]]
    assert all(r["gathered"] == [f"p{i}" for i in range(7)] for r in results)
    assert all(r["chosen"] == "rank0" for r in results)


def test_without_a_process_group_shard_and_unshard_are_the_identity():
    items = list(range(5))
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(items) == items and distributed.unshard(items) == items
    assert distributed.broadcast("x") == "x"


def t5_with_blocks(path: Path, layers: int) -> tuple[Path, int, int]:
    """A random T5 (byte tokenizer) whose weights are mostly in its `layers` encoder + decoder blocks; returns
    its directory and the bytes of its block weights and of the rest."""
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=384, d_model=64, d_kv=16, d_ff=256, num_layers=layers,
                                                num_heads=4, dropout_rate=0.0, decoder_start_token_id=0,
                                                feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    blocks = {id(p) for stack in (model.encoder, model.decoder) for p in stack.block.parameters()}
    size = {True: 0, False: 0}
    for p in model.parameters():
        size[id(p) in blocks] += p.numel() * p.element_size()
    return path, size[True], size[False]


@pytest.mark.slow
def test_fsdp_shards_the_frozen_blocks_and_trains_the_ddp_prompt(rte_dir, tmp_path):
    model, block_bytes, rest_bytes = t5_with_blocks(tmp_path / "t5", layers=4)
    common = ["--task", "rte", "--model", str(model), "--data", str(rte_dir), "--steps", "4", "--batch-size", "8",
              "--prompt-length", "4", "--eval-every", "2", "--seed", "3"]
    run_train([*common, "--output", "ddp", "--loss-history", "ddp.csv"], tmp_path, 2)
    run_train([*common, "--output", "fsdp", "--loss-history", "fsdp.csv", "--fsdp"], tmp_path, 2)

    # FSDP gathers each block's exact weights for its forward: the same sums as DDP, in the same order, up to
    # the gather's copies; the prompt's gradient is DDP's all-reduce in both runs (tolerances as above)
    ddp, fsdp = loss_rows(tmp_path / "ddp.csv"), loss_rows(tmp_path / "fsdp.csv")
    assert [s for s, _ in fsdp] == [s for s, _ in ddp] == [1, 2, 3, 4]
    assert [x for _, x in fsdp] == pytest.approx([x for _, x in ddp], rel=LOSS_RTOL)
    assert torch.allclose(prompt(tmp_path / "fsdp"), prompt(tmp_path / "ddp"), rtol=0, atol=PROMPT_ATOL)

    # measured on each rank at the end of training: the blocks' weights are halved, the rest replicated
    placed = {name: json.loads((tmp_path / name / "softprompt.json").read_text())["placement"]
              for name in ("ddp", "fsdp")}
    assert placed["fsdp"]["fsdp"] and not placed["ddp"]["fsdp"]
    assert placed["ddp"]["frozen_bytes_per_process"] == block_bytes + rest_bytes
    assert placed["fsdp"]["frozen_bytes_per_process"] == block_bytes // 2 + rest_bytes
    assert placed["fsdp"]["frozen_bytes_per_process"] < placed["ddp"]["frozen_bytes_per_process"]


def test_fsdp_needs_several_processes(rte_dir, tmp_path):
    from softprompt.config import PromptConfig, TrainConfig
    from softprompt.errors import SoftpromptError
    from softprompt.training import train

    with pytest.raises(SoftpromptError, match="--fsdp needs several processes: launch with torchrun"):
        train("rte", "tiny", rte_dir, tmp_path / "p", PromptConfig(length=2),
              TrainConfig(steps=1, batch_size=8, eval_every=1, max_source_length=64, fsdp=True), progress=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_two_gloo_processes_lm_adapt_as_one_process_does(tmp_path):
    """LM adaptation (the whole model trains) under torchrun: the ranks' gradients are all-reduced (the model is
    wrapped in DDP), so the loss curve and the validation losses are the 1-process ones."""
    words = ("the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "in", "parks", "and", "birds", "sang")
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40 + i % 20)) for i in range(200)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    common = ["lm-adapt", "--model", "tiny", "--corpus", "corpus.txt", "--steps", "3", "--batch-size", "8",
              "--max-source-length", "32", "--max-target-length", "32", "--eval-every", "2", "--eval-examples", "8",
              "--seed", "0"]
    run_cli([*common, "--output", "one"], tmp_path, 1)
    two = run_cli([*common, "--output", "two"], tmp_path, 2)
    one_meta, two_meta = (json.loads((tmp_path / n / "lm_adapt_metrics.json").read_text()) for n in ("one", "two"))
    assert two_meta["placement"]["processes"] == 2
    assert [r["step"] for r in two_meta["loss_curve"]] == [r["step"] for r in one_meta["loss_curve"]] == [1, 2, 3]
    assert [r["loss"] for r in two_meta["loss_curve"]] == pytest.approx([r["loss"] for r in one_meta["loss_curve"]],
                                                                         rel=LOSS_RTOL)
    for key in ("validation_loss_before", "validation_loss_after"):
        assert two_meta[key] == pytest.approx(one_meta[key], rel=LOSS_RTOL)
    assert two_meta["tokens_trained"] == one_meta["tokens_trained"]
    assert two.stdout.count("wrote two") == 1
