"""Adafactor with T5X's semantics (`t5x/adafactor.py`), the optimizer of the paper's official code.

Written by hand because neither library optimizer has these semantics. `transformers.optimization.Adafactor`
multiplies weight decay by the learning rate (`p -= wd * lr * p`: 3e-6 a step at lr 0.3 instead of the
paper's 1e-5) and factors the second moment of every 2-D tensor (a 100 x d prompt too);
`torch.optim.Adafactor` also scales decay by the learning rate and has no update clipping. What T5X does,
and this class does:

- second moment `v = beta * v + (1 - beta) * (g^2 + 1e-30)` with `beta = 1 - t^-decay_rate` (t = step, from 1);
  factored into row and column means only when the two largest dimensions are both >= min_dim_size_to_factor;
- `y = g / sqrt(v)`, divided by `max(1, rms(y) / clip_threshold)` (update clipping);
- the step `lr * y`, times `max(rms(param), 1e-3)` with parameter scaling;
- decoupled weight decay: `param = (1 - weight_decay) * param - step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

EPSILON1 = 1e-30  # T5X epsilon1: added to the squared gradient
EPSILON2 = 1e-3  # T5X epsilon2: the smallest parameter scale


def factored_dims(shape: torch.Size | tuple[int, ...], min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """(smaller, larger) of a 2-D shape's dimensions if both are >= min_dim_size_to_factor (T5X's
    `_factored_dims`), else None: the second moment is then kept in full."""
    if len(shape) != 2:  # T5X factors only matrices by default (rank > 2 needs an explicit rule)
        return None
    small, large = (0, 1) if shape[0] <= shape[1] else (1, 0)
    return (small, large) if shape[small] >= min_dim_size_to_factor else None


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


class T5XAdafactor(torch.optim.Optimizer):
    """Adafactor as T5X implements it: constant learning rate, decoupled weight decay, no momentum."""

    def __init__(self, params: Iterable[Any], *, lr: float, weight_decay_rate: float, scale_parameter: bool,
                 decay_rate: float, clip_threshold: float, min_dim_size_to_factor: int):
        # T5X's name `weight_decay_rate`, not `weight_decay`: the HF Trainer sets a `weight_decay` of 0 on the
        # parameter group of biases and layer norms, but T5X decays every parameter alike.
        defaults = dict(lr=lr, weight_decay_rate=weight_decay_rate, scale_parameter=scale_parameter,
                        decay_rate=decay_rate, clip_threshold=clip_threshold,
                        min_dim_size_to_factor=min_dim_size_to_factor)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        compute = torch.promote_types(param.dtype, torch.float32)  # bf16 / fp16 weights update in fp32
        grad = param.grad.to(compute)
        state = self.state[param]
        dims = factored_dims(param.shape, group["min_dim_size_to_factor"])
        if not state:
            state["step"] = 0
            if dims is None:
                state["v"] = torch.zeros_like(grad)
            else:
                state["v_row"] = grad.new_zeros(grad.shape[dims[0]])  # mean over the larger dimension
                state["v_col"] = grad.new_zeros(grad.shape[dims[1]])  # mean over the smaller dimension
        state["step"] += 1
        beta = 1.0 - state["step"] ** -group["decay_rate"]
        grad_sqr = grad * grad + EPSILON1
        if dims is None:
            state["v"].mul_(beta).add_(grad_sqr, alpha=1.0 - beta)
            y = grad * state["v"].rsqrt()
        else:
            small, large = dims
            state["v_row"].mul_(beta).add_(grad_sqr.mean(dim=large), alpha=1.0 - beta)
            state["v_col"].mul_(beta).add_(grad_sqr.mean(dim=small), alpha=1.0 - beta)
            row_factor = (state["v_row"] / state["v_row"].mean()).rsqrt().unsqueeze(large)
            col_factor = state["v_col"].rsqrt().unsqueeze(small)
            y = grad * row_factor * col_factor
        y = y / torch.clamp(_rms(y) / group["clip_threshold"], min=1.0)
        value = param.to(compute)
        scale = group["lr"] * torch.clamp(_rms(value), min=EPSILON2) if group["scale_parameter"] else group["lr"]
        if group["weight_decay_rate"]:
            value = value * (1.0 - group["weight_decay_rate"])
        param.copy_(value - scale * y)
