"""Where inference runs: one choice of device and weight dtype for every inference path.

`evaluate`, `ensemble`, `neighbors`, `transfer` and `serve` load the frozen base with
`models.load_base(spec, choose_placement(...))`; everything they then build (prompt vectors, ids, masks, labels)
goes to the device of the model's weights (`model_device`), so one decision places a whole path.

- device `auto`: CUDA when a GPU is visible, else XLA when torch_xla is importable and PJRT_DEVICE names a
  runtime (the TPU image sets PJRT_DEVICE=TPU; `make test-xla` sets CPU), else the CPU. `--device` /
  params.yaml `inference.device` names one instead: cpu, cuda, cuda:N or xla.
- dtype `auto`: bfloat16 where the device computes it natively (every XLA device, GPUs with native bf16:
  compute capability 8.0 and up), float32 elsewhere (CPUs emulate bf16 matmuls slowly). `--dtype` /
  `inference.dtype` forces float32 or bfloat16 (bf16 on a CPU is allowed: slow, but it checks the bf16 path).

Training does not go through here: the Trainer places the model itself and trains in bf16 autocast over
float32 weights (softprompt.xla.use_bf16, which shares `bf16_native`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from softprompt import xla
from softprompt.errors import SoftpromptError
from softprompt.xla import bf16_native  # the one bf16 rule, shared with training (xla.use_bf16)

AUTO = "auto"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICE_TYPES = ("cpu", "cuda", "xla")
DEVICE_FIX = "use auto, cpu, cuda, cuda:N or xla"


@dataclass(frozen=True)
class Placement:
    """The device the frozen base's weights live on and their dtype. Invariant: every tensor an inference path
    feeds the model is moved to `device`; floating inputs that enter the model (prompt vectors) take `dtype`."""

    device: torch.device
    dtype: torch.dtype

    def to_json(self) -> dict[str, str]:
        """What the metrics JSON and the /v2 model metadata record, e.g. {"device": "cuda:0", "dtype": "bfloat16"}."""
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}


CPU_FLOAT32 = Placement(torch.device("cpu"), torch.float32)  # load_base without a placement: what training loads


def choose_placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """The placement for inference: `device` and `dtype` as named (None: params.yaml `inference.device` /
    `inference.dtype`), `auto` resolved as the module doc says. An unusable choice (a GPU asked for where none is
    visible, an unknown name) is a SoftpromptError naming the option and the fix."""
    from softprompt.config import param_value

    target = resolve_device(device or param_value("inference.device"))
    return Placement(target, resolve_dtype(dtype or param_value("inference.dtype"), target))


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda:0, else the XLA device, else cpu; an explicit name is checked against what is present."""
    if name == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return xla_device() if xla_ready() else torch.device("cpu")
    try:
        target = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise SoftpromptError(f"--device / inference.device: {name!r} is not a device; {DEVICE_FIX}") from e
    if target.type not in DEVICE_TYPES:
        raise SoftpromptError(f"--device / inference.device: {name!r} is not supported for inference; {DEVICE_FIX}")
    if target.type == "cuda":
        return _cuda(name, target)
    if target.type == "xla":
        if not xla_ready():
            raise SoftpromptError(f"--device / inference.device: {name!r} needs torch_xla and PJRT_DEVICE (the TPU "
                                  "image sets both); use auto or cpu here")
        return xla_device()
    return target


def _cuda(name: str, target: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise SoftpromptError(f"--device / inference.device: {name!r} asked for, but torch sees no CUDA GPU; use "
                              "auto or cpu")
    index = target.index or 0
    if index >= torch.cuda.device_count():
        raise SoftpromptError(f"--device / inference.device: {name!r}, but only {torch.cuda.device_count()} GPU(s) "
                              "are visible; use cuda:0 or auto")
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 where `device` computes it natively, else float32; or the dtype named."""
    if name == AUTO:
        return torch.bfloat16 if bf16_native(device) else torch.float32
    if name not in DTYPES:
        raise SoftpromptError(f"--dtype / inference.dtype: {name!r} is not a weight dtype; use auto, "
                              f"{', '.join(DTYPES)}")
    return DTYPES[name]


def xla_ready() -> bool:
    """torch_xla is importable (and not switched off) and PJRT_DEVICE names its runtime."""
    return xla.device_type() is not None


def xla_device() -> torch.device:
    """This process's XLA device (xla:0 outside `torch_xla.launch`)."""
    import torch_xla

    return torch_xla.device()


def model_device(model: Any) -> torch.device:
    """The device of a model's weights: where the tensors fed to it must go."""
    return next(model.parameters()).device
