"""Registration in a pipeline pod: no git identity anywhere (no repo, global or system config)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from softprompt.registry.git import REGISTRAR

# GTO's tags go through pygit2, which reads the global config once per process: a fresh interpreter with a
# HOME that has no .gitconfig is what a pod's step is.
TAG_BOTH = """
import sys
from pathlib import Path
from softprompt.registry import git
repo = Path(sys.argv[1])
git.gto_register(repo, "rte", 1, git.git(repo, "rev-parse", "HEAD"), "Register rte-prompt v1.0.0")
git.gto_assign(repo, "rte", 1, "prod", "Promote rte-prompt v1.0.0")
"""


def test_gto_tags_get_the_registrars_identity_where_git_has_none(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    for key in [k for k in env if k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_"))]:
        del env[key]
    repo = tmp_path / "registry"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / "README.md").write_text("registry\n")
    git("add", "README.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert subprocess.run(["git", "-C", str(repo), "config", "user.email"], env=env).returncode != 0  # nobody

    proc = subprocess.run([sys.executable, "-c", TAG_BOTH, str(repo)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(git("tag", "--list").splitlines()) == {"rte-prompt@v1.0.0", "rte-prompt#prod#1"}
    tagger = git("for-each-ref", "--format=%(taggername) %(taggeremail)", "refs/tags/rte-prompt@v1.0.0")
    assert tagger == f"{REGISTRAR[0]} <{REGISTRAR[1]}>"
    assert "GIT_COMMITTER_NAME" not in os.environ  # the fallback is set only while GTO runs, in that process
