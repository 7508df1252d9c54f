"""Which params.yaml profile a pipeline run uses when none is given.

The top-level defaults are the paper's recipe (T5-base, 30,000 steps at batch 32): right on a cluster's GPU or
TPU nodes, days of work on a laptop CPU. So a run on this machine, with no accelerator visible and no
Kubeflow host, takes `pipeline.local_profile` instead, and says so; a given profile always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from softprompt.config import load_params

TPU_DEVICES = ("/dev/accel0", "/dev/vfio/0")  # how a TPU VM exposes its chips


def visible_accelerator() -> str | None:
    """A short name of the accelerator this process could train on (a CUDA GPU or a TPU), or None."""
    import torch

    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    if os.environ.get("TPU_ACCELERATOR_TYPE") or any(Path(p).exists() for p in TPU_DEVICES):
        return f"TPU {os.environ.get('TPU_ACCELERATOR_TYPE', '')}".strip()
    return None


def choose_profile(profile: str | None, on_cluster: bool) -> tuple[str | None, str]:
    """(profile to use, one line saying which and why). None means the top-level defaults (the paper's)."""
    if profile:
        return profile, f"profile {profile} (given)"
    if on_cluster:
        return None, "the paper's defaults (no profile given; submitting to the cluster at KFP_HOST)"
    if accelerator := visible_accelerator():
        return None, f"the paper's defaults (no profile given; {accelerator} visible)"
    params = load_params()
    local, steps = params["pipeline"]["local_profile"], params["train"]["steps"]
    return local, (f"profile {local} (no profile given, no KFP_HOST and no GPU/TPU visible: the paper's {steps:,} "
                   f"steps would take days on this CPU; PROFILE=paper overrides, PROFILE=smoke checks in a minute)")
