"""Several training processes on one or more machines: `torchrun`, `accelerate launch`, a Kubeflow TrainJob.

The Hugging Face Trainer does the data parallelism (DDP, or FSDP through an accelerate config): it starts the
process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR) and all-reduces the
gradients. What it leaves to the caller, and this module gives:

- the global batch: `--batch-size` is what one optimizer step sees, split over the processes (as on TPU chips);
- one writer: the output, the run record and the removal of the checkpoints happen on rank 0 only, with a
  barrier so no rank reads or deletes what another is still writing;
- one decision: evaluation during training is sharded over the ranks and its predictions gathered, so every
  rank scores the same predictions and picks the same best checkpoint; the checkpoint resumed from is rank 0's.

Torch's own collectives do the work; without a process group (one process) every function is the identity.
On TPUs the processes are PyTorch/XLA's (softprompt.xla) and the Trainer's XLA path does this itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def active() -> bool:
    """A torch.distributed process group is running (torchrun, once the Trainer's arguments exist)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes training together: the process group's size, else torchrun's WORLD_SIZE (the group starts only
    when TrainingArguments are built, after the batch split is decided), else 1."""
    if active():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes outputs."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if active():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (a picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: every world_size-th one from its rank (ranks differ by at most one item)."""
    return list(items[rank()::world_size()]) if active() else list(items)


def unshard(part: Sequence[Any]) -> list[Any]:
    """Every rank's `shard` results back in the original order, on every rank (the inverse of `shard`)."""
    if not active():
        return list(part)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(part))
    size = sum(len(p) for p in parts)
    return [parts[i % len(parts)][i // len(parts)] for i in range(size)]


def trainer_overrides() -> dict[str, Any]:
    """TrainingArguments for torchrun's ranks on CPUs: accelerate starts a CPU process group (gloo) only when told
    the run is on CPU; otherwise each rank would train alone on the whole batch, unsynchronized."""
    import torch

    if world_size() > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}
