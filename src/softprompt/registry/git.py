"""The one place that runs git: commands, the registry's write lock, commits, tags (GTO's too), code versions
and the clone-and-push of a registry repo given by URL."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.registry.versions import REGISTRY_DIR, artifact, semver

LOCK_FILE = "softprompt-registry.lock"


# $GIT_TOKEN reaches git through this credential helper, given in git's environment (GIT_CONFIG_COUNT/KEY/VALUE):
# it reads the variable when a server asks for credentials, so the token is never in a URL, an argument, a
# .git/config or a log, and git hands it only to the host that challenged for it.
CREDENTIAL_HELPER = '!f() { test "$1" = get && echo username=x-access-token && echo "password=$GIT_TOKEN"; }; f'
REDACTED = "***"


def git_env() -> dict[str, str] | None:
    """The environment git runs with: with $GIT_TOKEN set, ours plus the credential helper; else None (ours)."""
    if not os.environ.get("GIT_TOKEN"):
        return None
    env = dict(os.environ)
    count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    env.update({"GIT_CONFIG_COUNT": str(count + 1), f"GIT_CONFIG_KEY_{count}": "credential.helper",
                f"GIT_CONFIG_VALUE_{count}": CREDENTIAL_HELPER, "GIT_TERMINAL_PROMPT": "0"})
    return env


def redact(text: str) -> str:
    """`text` with $GIT_TOKEN (and any user:password in a URL) replaced by ***."""
    token = os.environ.get("GIT_TOKEN")
    if token:
        text = text.replace(token, REDACTED)
    return re.sub(r"(://[^/\s:@]+):[^/\s@]+@", rf"\1:{REDACTED}@", text)


class _RedactToken(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def redact_token_filter() -> logging.Filter:
    """A logging filter that removes the registry token from every record it sees."""
    return _RedactToken()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`git ARGS`, its output captured; the caller decides what a failure means."""
    return subprocess.run(["git", *args], capture_output=True, text=True, env=git_env())


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in `repo`; a failure becomes a SoftpromptError with git's own message."""
    proc = run("-C", str(repo), *args)
    if check and proc.returncode != 0:
        message = redact(proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SoftpromptError(f"{repo}: git {args[0]} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout.strip()


def repo_root(path: str | Path | None) -> Path:
    """The top of the git repo holding `path` (default: the current directory)."""
    path = Path(path or ".").resolve()
    if not path.is_dir():
        raise SoftpromptError(f"--repo {path}: no such directory; pass a clone of the registry repo")
    proc = run("-C", str(path), "rev-parse", "--show-toplevel")
    if proc.returncode != 0:
        raise SoftpromptError(f"--repo {path}: not a git repository; run inside a clone of the project or pass --repo")
    return Path(proc.stdout.strip())


def code_version(path: Path, *ignore: str) -> str | None:
    """The commit the checkout holding `path` is at, with `-dirty` if tracked files under `path` (but those in
    `ignore`) have uncommitted changes; None outside a git checkout."""
    commit = git(path, "rev-parse", "HEAD", check=False)
    if not commit:
        return None
    dirty = git(path, "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{p}" for p in ignore),
                check=False)
    return commit + ("-dirty" if dirty else "")


REGISTRAR = ("softprompt registry", "registry@softprompt.invalid")  # who commits and tags where git has nobody


def _identity(repo: Path) -> list[str]:
    """Commit identity: the repo's own, else a fixed one (pipeline containers have no git config)."""
    if git(repo, "config", "user.email", check=False):
        return []
    return ["-c", f"user.name={REGISTRAR[0]}", "-c", f"user.email={REGISTRAR[1]}"]


@contextlib.contextmanager
def _gto_identity(repo: Path) -> Iterator[None]:
    """The same fallback identity for GTO, which tags through pygit2 and takes no `git -c`: as the GIT_AUTHOR_* /
    GIT_COMMITTER_* variables pygit2's signature reads, only while GTO runs and only if the repo has none (a
    pipeline pod has no git config; without this, registration fails there after the commit)."""
    if not _identity(repo):
        yield
        return
    env = {f"GIT_{who}_{field}": value for who in ("AUTHOR", "COMMITTER")
           for field, value in zip(("NAME", "EMAIL"), REGISTRAR)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def commit(repo: Path, message: str, paths: list[str]) -> str:
    """Commit exactly `paths` (other staged work in the checkout is left alone); returns the commit."""
    git(repo, "add", "--", *paths)
    git(repo, *_identity(repo), "commit", "-q", "-m", message, "--", *paths)
    return git(repo, "rev-parse", "HEAD")


def tags(repo: Path) -> list[tuple[str, str, str]]:
    """(tag, commit, message subject) of every tag; annotated tags are dereferenced to their commit."""
    out = git(repo, "for-each-ref", "refs/tags", "--format=%(refname:short)\t%(*objectname)\t%(objectname)"
              "\t%(contents:subject)")
    rows = []
    for line in out.splitlines():
        name, deref, obj, subject = (line.split("\t") + ["", "", ""])[:4]
        rows.append((name, deref or obj, subject))
    return rows


def show(repo: Path, commit_id: str, path: str) -> str:
    """A file's text as of a commit."""
    return git(repo, "show", f"{commit_id}:{path}")


def gto_register(repo: Path, task: str, number: int, commit_id: str, message: str) -> None:
    """The version tag, written by GTO (so `gto show` reads it)."""
    import gto.api

    with _gto_identity(repo):
        gto.api.register(str(repo), artifact(task), commit_id, version=semver(number), message=message)


def gto_assign(repo: Path, task: str, number: int, stage: str, message: str) -> None:
    """A stage tag for the version, written by GTO; re-assigning a version that held the stage before (a
    rollback) is allowed."""
    import gto.api

    with _gto_identity(repo):
        gto.api.assign(str(repo), artifact(task), stage, version=semver(number), force=True, message=message)


@contextlib.contextmanager
def registry_lock(repo: Path, timeout: float) -> Iterator[None]:
    """One writer per checkout: an OS file lock in .git/ (released even if the process is killed)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(Path(git(repo, "rev-parse", "--absolute-git-dir")) / LOCK_FILE))
    try:
        with lock.acquire(timeout=timeout):
            discard_uncommitted(repo)
            yield
    except Timeout as e:
        raise SoftpromptError(f"{repo}: another registration held the registry lock for {timeout:.0f} s; "
                              "retry, or raise registry.lock_timeout in params.yaml") from e


def discard_uncommitted(repo: Path) -> None:
    """Drop what a registration killed halfway left in registry/ (a version exists only once committed+tagged)."""
    if not (repo / REGISTRY_DIR).exists():
        return
    git(repo, "reset", "-q", "--", REGISTRY_DIR, check=False)
    if git(repo, "ls-files", "--", REGISTRY_DIR):
        git(repo, "checkout", "-q", "--", REGISTRY_DIR)
    git(repo, "clean", "-fdq", "--", REGISTRY_DIR)
    # Ignored (DVC-tracked) version directories with no committed .dvc file are leftovers too.
    for child in (repo / REGISTRY_DIR).glob("*/*"):
        if child.is_dir() and not child.with_name(child.name + ".dvc").exists():
            shutil.rmtree(child, ignore_errors=True)


def is_git_url(repo: str | None) -> bool:
    return bool(repo) and (repo.startswith(("https://", "http://", "ssh://", "git@", "file://")))


def clone(url: str, dest: Path) -> Path:
    """Clone `url` (with $GIT_TOKEN, when set, through the credential helper: see CREDENTIAL_HELPER)."""
    proc = run("clone", "-q", url, str(dest))
    if proc.returncode != 0:
        raise SoftpromptError(f"cannot clone the registry repo {redact(url)}: {redact(proc.stderr.strip())[-300:]}")
    return dest


def push_atomic(repo: Path, tag_names: list[str]) -> str:
    """`git push --atomic` of the current branch and `tag_names`: all land or none. Returns git's error, or ""."""
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    proc = run("-C", str(repo), "push", "-q", "--atomic", "origin", f"HEAD:{branch}",
               *(f"refs/tags/{name}" for name in tag_names))
    return "" if proc.returncode == 0 else redact(proc.stderr.strip())[-300:]
