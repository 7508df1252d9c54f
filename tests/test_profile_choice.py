"""Which profile `make pipeline-run` uses without PROFILE: the given one, the paper's on a cluster or where an
accelerator is visible, else params.yaml's pipeline.local_profile, always with one line saying why."""

from __future__ import annotations

import pytest

from softprompt import profile_choice
from softprompt.config import load_params


def test_a_given_profile_always_wins(monkeypatch):
    monkeypatch.setattr(profile_choice, "visible_accelerator", lambda: "GPU NVIDIA L4")
    assert profile_choice.choose_profile("smoke", on_cluster=True) == ("smoke", "profile smoke (given)")


@pytest.mark.parametrize(("on_cluster", "accelerator", "expected", "why"), [
    (True, None, None, "submitting to the cluster at KFP_HOST"),
    (False, "GPU NVIDIA L4", None, "GPU NVIDIA L4 visible"),
    (False, None, "local", "no KFP_HOST and no GPU/TPU visible"),
])
def test_without_a_profile(monkeypatch, on_cluster, accelerator, expected, why):
    monkeypatch.setattr(profile_choice, "visible_accelerator", lambda: accelerator)
    profile, line = profile_choice.choose_profile(None, on_cluster=on_cluster)
    assert profile == expected and why in line
    assert (profile or "") == (load_params()["pipeline"]["local_profile"] if expected else "")
    assert "\n" not in line


def test_this_machine_has_no_accelerator(monkeypatch):
    monkeypatch.delenv("TPU_ACCELERATOR_TYPE", raising=False)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert profile_choice.visible_accelerator() is None
