"""softprompt.optim.T5XAdafactor: one step against values computed by hand from T5X's update rule."""

from __future__ import annotations

import pytest
import torch

from softprompt.config import TrainConfig
from softprompt.optim import T5XAdafactor, factored_dims
from softprompt.training import adafactor


def one_step(param: torch.Tensor, grad: torch.Tensor, **settings) -> tuple[torch.Tensor, dict]:
    p = torch.nn.Parameter(param.clone())
    cls, kwargs = adafactor(TrainConfig(**settings))
    opt = cls([p], **kwargs)
    p.grad = grad.clone()
    opt.step()
    return p.detach(), opt.state[p]


def test_prompt_step_decays_decoupled_and_keeps_a_full_second_moment():
    """Prompt recipe (lr 0.3, wd 1e-5, no parameter scaling) on a 100 x 768 prompt: at step 1 the second moment
    is g^2 (+1e-30), so the update is sign(g) with RMS 1 (no clipping), and T5X gives
    p' = (1 - 1e-5) p - 0.3 sign(g). HF's Adafactor would give (1 - 0.3 * 1e-5) p - 0.3 sign(g)."""
    param = torch.full((100, 768), 2.0, dtype=torch.float64)
    grad = torch.randn(100, 768, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    new, state = one_step(param, grad, method="prompt")
    expected = (1 - 1e-5) * 2.0 - 0.3 * torch.sign(grad)
    assert torch.allclose(new, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(new, (1 - 0.3 * 1e-5) * 2.0 - 0.3 * torch.sign(grad), rtol=0, atol=1e-7)
    assert set(state) == {"step", "v"} and state["v"].shape == (100, 768)  # 100 < 128: not factored


def test_model_step_scales_by_parameter_rms_and_factors_large_matrices():
    """Model recipe (lr 0.001, no decay, parameter scaling) on a 128 x 256 matrix with a rank-1 gradient a b^T:
    the factored estimate is exact (v_ij = a_i^2 b_j^2), so again y = sign(g), and the step is lr * rms(p) = 0.003."""
    param = torch.full((128, 256), 3.0, dtype=torch.float64)
    a = torch.linspace(0.5, 2.0, 128, dtype=torch.float64)
    b = torch.linspace(-1.0, 1.5, 256, dtype=torch.float64)
    b[b.abs() < 1e-3] = 0.25  # no zero gradients
    grad = torch.outer(a, b)
    new, state = one_step(param, grad, method="model")
    assert torch.allclose(new, 3.0 - 0.001 * 3.0 * torch.sign(grad), rtol=0, atol=1e-9)
    assert state["v_row"].shape == (128,) and state["v_col"].shape == (256,) and "v" not in state


def test_update_clipping_and_decay_schedule():
    """Step 2 with decay rate 0.8: beta = 1 - 2^-0.8 = 0.4257; v = beta * 1 + (1 - beta) * 100 = 57.83, so
    y = 10 / sqrt(57.83) = 1.315 per entry: its RMS exceeds the threshold 1.0 and the update is clipped to 1."""
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = T5XAdafactor([p], lr=1.0, weight_decay_rate=0.0, scale_parameter=False, decay_rate=0.8,
                       clip_threshold=1.0, min_dim_size_to_factor=128)
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()  # v = 1, y = 1: p = -1
    beta = 1 - 2 ** -0.8
    assert 10 / (beta + (1 - beta) * 100) ** 0.5 == pytest.approx(1.315, abs=1e-3)  # > 1: clipped
    p.grad = torch.tensor([10.0, 10.0, -10.0, 10.0], dtype=torch.float64)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([-2.0, -2.0, 0.0, -2.0], dtype=torch.float64), rtol=0,
                          atol=1e-12)
    assert opt.state[p]["v"][0] == pytest.approx(beta + (1 - beta) * 100)


@pytest.mark.parametrize(("shape", "dims"), [((100, 768), None), ((128, 128), (0, 1)), ((768, 128), (1, 0)),
                                             ((512,), None), ((200, 200, 200), None)])
def test_factoring_rule(shape, dims):
    assert factored_dims(torch.Size(shape), 128) == dims
