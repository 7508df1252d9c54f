"""The registry's DVC side: the repo and its remote, content hashes as DVC computes them, .dvc files, and the
check that refuses a copy whose files are not the ones registered."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError
from softprompt.io import file_md5

REMOTE_NAME = "registry"


@contextlib.contextmanager
def dvc_repo(repo: Path) -> Iterator[Any]:
    """A dvc.repo.Repo with its chatter (hints about `git add`) kept off the terminal."""
    from dvc.repo import Repo

    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with Repo(str(repo)) as dvc:
            yield dvc
    except SoftpromptError:
        raise
    except Exception as e:  # dvc raises many types; the user needs the message, not the class
        raise SoftpromptError(f"{repo}: dvc failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    finally:
        logger.setLevel(level)


def ensure_dvc(repo: Path, url: str, commit_remote: bool = True) -> list[str]:
    """`dvc init` if needed and point the default remote at `url`; returns the config files to commit.

    With `commit_remote=False` the remote goes into `.dvc/config.local` (DVC's untracked, per-checkout level),
    so the committed .dvc/config keeps whatever remote the repo's owner set: a pipeline pod registering into
    a shared registry repo never changes where that repo's files live."""
    from dvc.repo import Repo

    if not (repo / ".dvc").is_dir():
        Repo.init(str(repo)).close()
    with dvc_repo(repo) as dvc:
        remote = dvc.config["remote"].get(REMOTE_NAME, {})
        if remote.get("url") != url or dvc.config["core"].get("remote") != REMOTE_NAME:
            with dvc.config.edit("repo" if commit_remote else "local") as conf:
                conf["remote"][REMOTE_NAME] = {**conf["remote"].get(REMOTE_NAME, {}), "url": url}
                conf["core"]["remote"] = REMOTE_NAME
    if url.startswith("/"):
        Path(url).mkdir(parents=True, exist_ok=True)
    return [p for p in (".dvc/config", ".dvc/.gitignore", ".dvcignore") if (repo / p).exists()]


def add_and_push(repo: Path, path: Path) -> None:
    """Track `path` with DVC and upload its files to the default remote."""
    with dvc_repo(repo) as dvc:
        dvc.add([str(path)])
        dvc.push(targets=[str(path)])


def pull(repo: Path, path: Path, force: bool = False) -> None:
    with dvc_repo(repo) as dvc:
        dvc.pull(targets=[str(path)], force=force)


def _listing_md5(entries: list[dict[str, str]]) -> str:
    """DVC's directory hash: md5 of the JSON listing of (relpath, md5) sorted by path, plus `.dir`."""
    entries = sorted(entries, key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def dir_md5(path: Path) -> str:
    """DVC's hash of a directory (every file in it)."""
    return _listing_md5([{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
                         for p in path.rglob("*") if p.is_file()])


def prompt_md5(prompt_dir: str | Path) -> str:
    """The prompt's content hash: DVC's directory hash over its adapter files only. The registered copy's hash
    also covers softprompt.json (run id, timings, lineage), which differs on every run of the same prompt."""
    from softprompt.prompt import ADAPTER_FILES

    return _listing_md5([{"md5": file_md5(Path(prompt_dir) / name), "relpath": name} for name in ADAPTER_FILES])


def read_dvc_file(text: str, where: str) -> dict[str, Any]:
    """The first output's md5 and path, and the `meta:` block, of a .dvc file's text."""
    try:
        data = yaml.safe_load(text)
        out = data["outs"][0]
        return {"md5": out["md5"], "path": out["path"], "meta": data.get("meta") or {}}
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise SoftpromptError(f"{where}: not a valid .dvc file ({e}); restore it from git") from e


def write_meta(dvc_file: Path, meta: dict[str, Any]) -> str:
    """Add a `meta:` block to a .dvc file (DVC keeps it and ignores it for hashing); returns the output's md5."""
    data = yaml.safe_load(dvc_file.read_text())
    data["meta"] = meta
    dvc_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return read_dvc_file(dvc_file.read_text(), str(dvc_file))["md5"]


def verify(path: Path, md5: str) -> None:
    """Refuse a prompt directory whose content hash is not the one the registry recorded."""
    actual = dir_md5(path) if path.is_dir() else ""
    if actual != md5:
        raise SoftpromptError(f"{path}: files do not match the registered hash (recorded {md5}, got "
                              f"{actual or 'no files'}); the copy is corrupt or was modified, refusing it")
