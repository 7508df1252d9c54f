"""Training on TPUs with PyTorch/XLA: what changes where torch_xla is installed (the TPU image).

The Hugging Face Trainer runs on XLA by itself once torch_xla is importable (transformers'
`is_torch_xla_available`): its device becomes `xla:N`, batches reach the device through torch_xla's
MpDeviceLoader, the optimizer steps through `xm.optimizer_step` (which all-reduces the gradients over the
processes) and checkpoints are written from host copies. What it leaves to the caller, and this module does:

- all the chips: a TPU host holds several chips (a 2x2 v5e slice: 4) and PyTorch/XLA drives one chip per
  process, so `on_every_chip` starts one process per chip (`torch_xla.launch`) and the Trainer's data
  parallelism runs over them; the batch size stays the global one (`per_device_batch`);
- static shapes: XLA compiles one graph per input shape, so every batch is padded to the configured
  lengths (`StaticSeq2SeqCollator`) and the last partial batch is dropped: the step compiles once;
- bf16: the Trainer's bf16 autocast, on every XLA device as on GPUs that support it (`use_bf16`).

Without torch_xla (the CPU and CUDA images, the main venv) every function here leaves things as they were.
`make test-xla` runs this path on XLA's CPU device (PJRT_DEVICE=CPU).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from transformers.utils import is_torch_xla_available

from softprompt import distributed
from softprompt.errors import SoftpromptError
from softprompt.io import write_json

WORKER_ENV = "SOFTPROMPT_XLA_WORKER"  # set in the processes `on_every_chip` starts, so they do not start more
F = TypeVar("F", bound=Callable[..., Any])


def available() -> bool:
    """torch_xla is installed (and not switched off with USE_TORCH_XLA=0): the Trainer trains on XLA."""
    return is_torch_xla_available()


def device_type() -> str | None:
    """The XLA runtime's device type (PJRT_DEVICE: TPU, CPU, ...), or None without torch_xla. Reads the
    environment only, so it does not start the runtime (which must not run before `torch_xla.launch`)."""
    if not available():
        return None
    import torch_xla.runtime as xr

    return xr.device_type()


def bf16_native(device: torch.device) -> bool:
    """The device computes bf16 in hardware: every XLA device (TPUs compute in bf16), CUDA GPUs of compute
    capability 8.0+ (without `including_emulation=False` torch also says yes for older GPUs that emulate it)."""
    if device.type == "xla":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return False


def use_bf16() -> bool:
    """Train in bf16 autocast: on XLA devices (TPUs compute in bf16 natively) and on GPUs that support it
    natively (`bf16_native`, the rule inference's dtype (softprompt.device) follows too)."""
    return available() or bf16_native(torch.device("cuda"))


def world_size() -> int:
    """Processes training together on XLA devices (one per chip); 1 without torch_xla."""
    if not available():
        return 1
    import torch_xla.runtime as xr

    return xr.world_size()


def training_processes() -> int:
    """Processes training together: one per XLA chip with torch_xla, else torchrun's ranks (1 without)."""
    return world_size() if available() else distributed.world_size()


def per_device_batch(batch_size: int, grad_accumulation: int) -> int:
    """Examples per device and micro-step so that one optimizer step sees `batch_size` examples: the batch is
    split over the processes (TPU chips, or torchrun's ranks), so the paper's batch of 32 stays 32 on 4 chips."""
    processes = training_processes()
    what = "XLA device(s)" if available() else "process(es)"
    parts = grad_accumulation * processes
    if batch_size % parts:
        raise SoftpromptError(f"batch_size: {batch_size} does not split into {processes} {what} x "
                              f"{grad_accumulation} accumulation step(s); use a multiple of {parts}")
    return batch_size // parts


@dataclass
class StaticSeq2SeqCollator:
    """Pads every batch to one shape: inputs to `source_length`, labels (with -100) to `target_length`.

    Written here because DataCollatorForSeq2Seq pads labels either to the longest in the batch or, with
    padding="max_length", to the inputs' `max_length`: neither gives the fixed (source, target) shape that
    lets XLA compile the step once.
    """

    tokenizer: PreTrainedTokenizerBase
    source_length: int
    target_length: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows), max(len(r["labels"]) for r in rows)
        if longest[0] > self.source_length or longest[1] > self.target_length:
            raise SoftpromptError(f"a batch has {longest[0]} input / {longest[1]} target tokens, over the static "
                                  f"lengths {self.source_length} / {self.target_length}; raise max_source_length "
                                  "/ max_target_length")
        batch = self.tokenizer.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows],
                                   padding="max_length", max_length=self.source_length, return_tensors="pt")
        batch["labels"] = torch.tensor([list(r["labels"]) + [-100] * (self.target_length - len(r["labels"]))
                                        for r in rows])
        return dict(batch)


def collator(tokenizer: PreTrainedTokenizerBase, source_length: int, target_length: int) -> Any:
    """The Trainer's collator: static shapes on XLA, padding to the longest in the batch elsewhere (faster on
    GPUs and CPUs, which run any shape)."""
    if available():
        return StaticSeq2SeqCollator(tokenizer, source_length, target_length)
    return DataCollatorForSeq2Seq(tokenizer, model=None, label_pad_token_id=-100)


def trainer_overrides() -> dict[str, Any]:
    """TrainingArguments that XLA needs: no partial last batch (it would be a second shape to compile)."""
    return {"dataloader_drop_last": True} if available() else {}


def placement(model: torch.nn.Module) -> dict[str, Any]:
    """Where training ran, for softprompt.json: the devices of the trainable and the frozen weights (e.g.
    `xla:0`), the XLA device type (TPU, or CPU under `make test-xla`), the processes, bf16 and the number of
    XLA compilations."""
    devices: dict[str, set[str]] = {"trainable": set(), "frozen": set()}
    for p in model.parameters():
        devices["trainable" if p.requires_grad else "frozen"].add(str(p.device))
    return {**{k: sorted(v) for k, v in devices.items()}, "xla_device_type": device_type(),
            "processes": training_processes(), "bf16": use_bf16(), "xla_compilations": compilations()}


def compilations() -> int | None:
    """Graphs XLA has compiled in this process so far (None without torch_xla). With static shapes it stays at a
    handful however many steps run; one per step means the shapes change and every step recompiles."""
    if not available():
        return None
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


def to_host(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its weights on the CPU, for saving: safetensors writes host memory, not XLA tensors."""
    return model.to("cpu") if available() else model


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def on_every_chip(fn: F) -> F:
    """Decorator: with torch_xla, run `fn` once per local XLA device, each in its own process
    (`torch_xla.launch`: 4 on a 2x2 v5e host, 1 on XLA's CPU device), and return what chip 0's process
    returned (a JSON-able dict). Without torch_xla, or inside such a process, `fn` runs as it is."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not available() or os.environ.get(WORKER_ENV):
            return fn(*args, **kwargs)
        import torch_xla

        with tempfile.TemporaryDirectory(prefix="softprompt-xla-") as tmp, _env(WORKER_ENV, "1"):
            result = Path(tmp) / "result.json"
            # `run` (the decorated function, importable by name) goes to the processes; WORKER_ENV, which they
            # inherit, makes it call `fn` there.
            torch_xla.launch(_run_and_keep_first, args=(run, str(result), args, kwargs))
            if not result.is_file():
                raise SoftpromptError(f"{fn.__name__}: the XLA processes ended without a result; see their log above")
            return json.loads(result.read_text(encoding="utf-8"))

    return run  # type: ignore[return-value]


def _run_and_keep_first(index: int, fn: Callable[..., Any], result: str, args: tuple, kwargs: dict) -> None:
    out = fn(*args, **kwargs)
    if index == 0:
        write_json(result, json.loads(json.dumps(out, default=str)))
