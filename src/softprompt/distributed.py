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

import torch
import torch.distributed as dist

from softprompt.errors import SoftpromptError

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
    if world_size() > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}


def shard_frozen_blocks(model: torch.nn.Module, block_types: tuple[type, ...]) -> int:
    """Shard the frozen transformer blocks of `model` over the ranks with FSDP2 (`fully_shard`): each rank keeps
    1/world of every block's weights and gathers a block only for its forward. Everything else (the soft prompt,
    the embeddings and the head) stays replicated. Returns the number of blocks sharded.

    Only frozen blocks are sharded (a block with a trainable weight is refused): their weights need no
    gradient reduce-scatter, so gloo (CPU) runs it as NCCL does. The replicated trainable weights are
    synchronised by the DDP the Trainer wraps the model in, told here to leave the sharded ones alone.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    if not active():
        raise SoftpromptError("--fsdp needs several processes: launch with torchrun --nproc_per_node N")
    blocks = [m for m in model.modules() if isinstance(m, block_types)]
    if not blocks:
        raise SoftpromptError(f"--fsdp: the model has no {'/'.join(t.__name__ for t in block_types)} to shard")
    trainable = [n for b in blocks for n, p in b.named_parameters() if p.requires_grad]
    if trainable:
        raise SoftpromptError(f"--fsdp shards frozen blocks only, and {trainable[0]} trains; use --method prompt")
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    sharded = {id(p) for b in blocks for p in b.parameters()} | {id(x) for b in blocks for x in b.buffers()}
    ignore = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if id(p) in sharded]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
    return len(blocks)


def local_bytes(params: Any) -> int:
    """Bytes of `params` held by this rank: a sharded (DTensor) weight counts its local shard only."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in params:
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total
