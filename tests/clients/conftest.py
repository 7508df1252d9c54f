"""One `dvc repro`'d copy of this project, shared by the client tests: its prompt, metrics, plots and
validation report are the artifacts the real clients (dvc, gto, peft, Great Expectations) read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO, rte_rows, write_jsonl

TASK = "rte"
BIN = Path(sys.executable).parent  # the venv's softprompt, dvc and gto
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@dataclass
class Project:
    root: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path | None = None) -> str:
        """Run a command (a venv tool or git) in the project; fail the test with its stderr if it fails."""
        proc = subprocess.run(args, cwd=cwd or self.root, env=self.env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc.stdout


def small_params(root: Path) -> Path:
    """params.yaml as shipped, with one task on a fixture and the smoke profile cut to seconds."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["repro"]["tasks"] = {TASK: {"data": "data/raw/RTE"}}
    params["validate"]["min_rows"] = 8
    smoke = params["profiles"]["smoke"]
    smoke["prompt"]["length"] = 4
    smoke["train"].update(steps=6, batch_size=4, eval_every=3)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Project:
    """This repo's dvc.yaml and package source with fixture raw data (DVC-tracked, as data/README.md says),
    after `dvc repro` (committed: the baseline) and one `dvc exp run` with another seed (the workspace)."""
    root = tmp_path_factory.mktemp("clients") / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copytree(REPO / "src" / "softprompt", root / "src" / "softprompt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, **GIT_ID, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "SOFTPROMPT_PARAMS": str(small_params(root)),  # the CLI reads this copy
           "DVC_NO_ANALYTICS": "1"}
    p = Project(root, env)
    write_jsonl(root / "data/raw/RTE/train.jsonl", rte_rows(32))
    write_jsonl(root / "data/raw/RTE/val.jsonl", rte_rows(8, start=100))
    p.run("git", "init", "-q", "-b", "main")
    p.run("dvc", "init", "-q")
    p.run("dvc", "add", "-q", "data/raw/RTE")
    p.run("git", "add", "-A")
    p.run("git", "commit", "-qm", "data: RTE fixture as ingested")
    p.run("dvc", "repro", "evaluate")  # the task prompts (the replication stages need ../shared)
    p.run("git", "add", "-A")
    p.run("git", "commit", "-qm", "baseline")
    p.run("dvc", "exp", "run", "evaluate", "--set-param", "train.seed=7")
    return p
