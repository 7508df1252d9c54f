"""Helpers of the registry tests: real prompts on the tiny model, metrics files, git."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GIT_AUTHOR_NAME": "t",
       "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def make_prompt(out: Path, task: str, seed: int, length: int = 4) -> Path:
    """A real (untrained) soft prompt on the tiny base model, saved as `softprompt train` would."""
    from softprompt.config import PromptConfig
    from softprompt.models import load_base
    from softprompt.prompt import attach_prompt, save_prompt

    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=length, init="random"), None, seed)
    meta = {"task": task, "method": "prompt", "base_model": base.name, "base_fingerprint": base.fingerprint,
            "prompt_length": length, "init": "random", "train": {"seed": seed, "steps": 5},
            "data": {"source": "data/validated/" + task, "files": {"train.jsonl": "md5:abc"}}}
    return save_prompt(model, out, meta)


def metrics(tmp: Path, task: str, value: float, name: str = "accuracy") -> Path:
    path = tmp / f"metrics-{task}-{value}.json"
    path.write_text(json.dumps({"task": task, "split": "validation", name: value, "main_metric": name}))
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def init_repo(root: Path) -> Path:
    """An empty git repo with one commit: a registry checkout to register into."""
    root.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "t"], ["config", "user.email", "t@t"]):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    (root / "README.md").write_text("registry\n")
    subprocess.run(["git", "-C", str(root), "add", "README.md"], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "init"], check=True)
    return root
