"""The prompt registry: DVC holds each prompt's files, GTO git tags say which versions exist and which is in production.

Layout of a registry repo (this project's repo, or a clone given by `--repo`):

    registry/<task>/v<N>/          one immutable version (adapter + softprompt.json lineage), DVC-tracked
    registry/<task>/v<N>.dvc       its content hash (git), with a `meta:` summary (metric, run id, ...)
    registry/<task>/production/    a copy of the production version, so `dvc pull registry/<task>/production`
                                   fetches it in a fresh clone (same content hash: stored once in the remote)

Versions and stages follow GTO's tag conventions: `<task>-prompt@v<N>.0.0` registers version N on the commit
that added it, `<task>-prompt#prod#<K>` assigns the production stage (the highest K wins, so there is exactly
one production version per task). A version is visible only once its tag exists; every write runs under a
file lock in `.git/` and first discards what a killed registration left behind, so nothing half-written shows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, file_md5, write_json

REGISTRY_DIR = "registry"
REMOTE_NAME = "registry"
PRODUCTION = "production"
META_FILE = "softprompt.json"  # as softprompt.prompt.META_FILE; not imported to keep torch out of `registry list`
POLICIES = ("auto", "never", "force")
_VERSION_TAG = re.compile(r"^(?P<task>[a-z0-9][a-z0-9_-]*)-prompt@v(?P<n>\d+)\.0\.0$")
_STAGE_TAG = re.compile(r"^(?P<task>[a-z0-9][a-z0-9_-]*)-prompt#(?P<stage>[a-z0-9-]+)#(?P<k>\d+)$")

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """The `registry:` section of params.yaml (an explicit argument or $SOFTPROMPT_REGISTRY_REMOTE wins)."""

    remote: str
    stage: str = "prod"
    promote: str = "auto"
    promotion_margin: float = 0.0
    lock_timeout: float = 600.0

    @classmethod
    def load(cls, remote: str | None = None, margin: float | None = None) -> Settings:
        from softprompt.config import load_params

        section = load_params().get("registry") or {}
        values = {k: section[k] for k in ("remote", "stage", "promote", "promotion_margin", "lock_timeout")
                  if k in section}
        values["remote"] = remote or os.environ.get("SOFTPROMPT_REGISTRY_REMOTE") or values.get("remote")
        if margin is not None:
            values["promotion_margin"] = margin
        if not values["remote"]:
            raise SoftpromptError("registry.remote is not set in params.yaml; set it to a directory or gs://BUCKET/PATH")
        if values.get("promote", "auto") not in POLICIES:
            raise SoftpromptError(f"registry.promote: must be one of {', '.join(POLICIES)}, got {values['promote']!r}")
        return cls(**values)

    def remote_url(self) -> str:
        """The URL DVC gets: gs:// as is, a local directory made absolute (so every clone on this machine finds it)."""
        if self.remote.startswith(("gs://", "s3://", "http://", "https://")):
            return self.remote
        return str(Path(os.path.expanduser(self.remote)).resolve())


@dataclass
class Version:
    """One registered version of a task's prompt, as the registry records it."""

    task: str
    number: int
    commit: str
    md5: str = ""
    main_metric: str = ""
    value: float | None = None
    run_id: str = ""
    registered_at: str = ""
    production: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"v{self.number}"


def artifact(task: str) -> str:
    return f"{task}-prompt"


def semver(number: int) -> str:
    """GTO versions are SemVer with a `v`; registry versions are whole numbers, so N -> vN.0.0."""
    return f"v{number}.0.0"


def parse_version(text: str | int) -> int:
    """`3`, `v3` or `v3.0.0` -> 3."""
    match = re.fullmatch(r"v?(\d+)(\.0\.0)?", str(text).strip())
    if not match or int(match.group(1)) < 1:
        raise SoftpromptError(f"--version {text!r}: expected a version number like 3, v3 or v3.0.0")
    return int(match.group(1))


def check_task(task: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", task):
        raise SoftpromptError(f"--task {task!r}: use a lower-case task name such as rte or cb")
    return task


# ---------------------------------------------------------------------------------------------- git


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in `repo`; a failure becomes a SoftpromptError with git's own message."""
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        message = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SoftpromptError(f"{repo}: git {args[0]} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout.strip()


def repo_root(path: str | Path | None) -> Path:
    """The top of the git repo holding `path` (default: the current directory)."""
    path = Path(path or ".").resolve()
    if not path.is_dir():
        raise SoftpromptError(f"--repo {path}: no such directory; pass a clone of the registry repo")
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SoftpromptError(f"--repo {path}: not a git repository; run inside a clone of the project or pass --repo")
    return Path(proc.stdout.strip())


def _identity(repo: Path) -> list[str]:
    """Commit identity: the repo's own, else a fixed one (pipeline containers have no git config)."""
    if git(repo, "config", "user.email", check=False):
        return []
    return ["-c", "user.name=softprompt registry", "-c", "user.email=registry@softprompt.invalid"]


def _commit(repo: Path, message: str, paths: list[str]) -> str:
    """Commit exactly `paths` (other staged work in the checkout is left alone); returns the commit."""
    git(repo, "add", "--", *paths)
    git(repo, *_identity(repo), "commit", "-q", "-m", message, "--", *paths)
    return git(repo, "rev-parse", "HEAD")


def _tags(repo: Path) -> list[tuple[str, str, str]]:
    """(tag, commit, message subject) of every tag; annotated tags are dereferenced to their commit."""
    out = git(repo, "for-each-ref", "refs/tags", "--format=%(refname:short)\t%(*objectname)\t%(objectname)"
              "\t%(contents:subject)")
    rows = []
    for line in out.splitlines():
        name, deref, obj, subject = (line.split("\t") + ["", "", ""])[:4]
        rows.append((name, deref or obj, subject))
    return rows


# ---------------------------------------------------------------------------------------------- dvc


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


def ensure_dvc(repo: Path, settings: Settings) -> list[str]:
    """`dvc init` if needed and point the default remote at the configured URL; returns files to commit."""
    from dvc.repo import Repo

    if not (repo / ".dvc").is_dir():
        Repo.init(str(repo)).close()
    url = settings.remote_url()
    with dvc_repo(repo) as dvc:
        remote = dvc.config["remote"].get(REMOTE_NAME, {})
        if remote.get("url") != url or dvc.config["core"].get("remote") != REMOTE_NAME:
            with dvc.config.edit() as conf:
                conf["remote"][REMOTE_NAME] = {**remote, "url": url}
                conf["core"]["remote"] = REMOTE_NAME
    if url.startswith("/"):
        Path(url).mkdir(parents=True, exist_ok=True)
    return [p for p in (".dvc/config", ".dvc/.gitignore", ".dvcignore") if (repo / p).exists()]


def dir_md5(path: Path) -> str:
    """DVC's hash of a directory: md5 of the sorted JSON listing of (relpath, file md5), plus `.dir`."""
    entries = sorted(({"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
                      for p in path.rglob("*") if p.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def read_dvc_file(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
        out = data["outs"][0]
        return {"md5": out["md5"], "path": out["path"], "meta": data.get("meta") or {}}
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise SoftpromptError(f"{where}: not a valid .dvc file ({e}); restore it from git") from e


# ---------------------------------------------------------------------------------------------- reading


def task_dir(repo: Path, task: str) -> Path:
    return repo / REGISTRY_DIR / task


def _rel(repo: Path, path: Path) -> str:
    return path.relative_to(repo).as_posix()


def versions(repo: Path, task: str | None = None, stage: str = "prod") -> list[Version]:
    """Every registered (tagged) version, oldest first, with its recorded metric and production flag."""
    found: list[Version] = []
    prod = production_numbers(repo, stage)
    for tag, commit, _ in _tags(repo):
        match = _VERSION_TAG.match(tag)
        if not match or (task and match["task"] != task):
            continue
        t, n = match["task"], int(match["n"])
        rel = f"{REGISTRY_DIR}/{t}/v{n}.dvc"
        info = read_dvc_file(git(repo, "show", f"{commit}:{rel}"), f"{tag}:{rel}")
        meta = info["meta"]
        found.append(Version(task=t, number=n, commit=commit, md5=info["md5"], main_metric=meta.get("main_metric", ""),
                             value=meta.get("value"), run_id=meta.get("run_id", ""),
                             registered_at=meta.get("registered_at", ""), production=prod.get(t) == n, meta=meta))
    return sorted(found, key=lambda v: (v.task, v.number))


def production_numbers(repo: Path, stage: str = "prod") -> dict[str, int]:
    """task -> version number in `stage`: the stage tag with the highest counter K, as GTO numbers them."""
    by_commit = {}
    latest: dict[str, tuple[int, str]] = {}
    for tag, commit, _ in _tags(repo):
        if match := _VERSION_TAG.match(tag):
            by_commit[(match["task"], commit)] = int(match["n"])
        elif (match := _STAGE_TAG.match(tag)) and match["stage"] == stage:
            k = int(match["k"])
            if k > latest.get(match["task"], (0, ""))[0]:
                latest[match["task"]] = (k, commit)
    return {t: by_commit[(t, c)] for t, (_, c) in latest.items() if (t, c) in by_commit}


def get_version(repo: Path, task: str, number: int, stage: str = "prod") -> Version:
    for v in versions(repo, task, stage):
        if v.number == number:
            return v
    known = ", ".join(v.name for v in versions(repo, task, stage)) or "none"
    raise SoftpromptError(f"{task} has no version v{number} in {repo} (registered: {known}); "
                          "see `softprompt registry list`")


def production(repo: Path, task: str, stage: str = "prod") -> Version | None:
    number = production_numbers(repo, stage).get(task)
    return get_version(repo, task, number, stage) if number else None


# ---------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def registry_lock(repo: Path, timeout: float) -> Iterator[None]:
    """One writer per checkout: an OS file lock in .git/ (released even if the process is killed)."""
    from filelock import FileLock, Timeout

    git_dir = Path(git(repo, "rev-parse", "--absolute-git-dir"))
    lock = FileLock(str(git_dir / "softprompt-registry.lock"))
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


def next_number(repo: Path, task: str) -> int:
    """1 + the highest version seen in tags or in the tree (an untagged commit's number is never reused)."""
    tagged = [v.number for v in versions(repo, task)]
    on_disk = [int(p.stem[1:]) for p in task_dir(repo, task).glob("v*.dvc") if p.stem[1:].isdigit()]
    return max([0, *tagged, *on_disk]) + 1


def read_metrics(path: Path, task: str) -> tuple[str, float, dict[str, Any]]:
    """(main metric name, its value, all numeric metrics) from `softprompt evaluate`'s JSON."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SoftpromptError(f"--metrics {path}: no such file; pass the --output of `softprompt evaluate`") from e
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"--metrics {path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict) or not isinstance(data.get("main_metric"), str):
        raise SoftpromptError(f"--metrics {path}: no 'main_metric' field; pass the --output of `softprompt evaluate`")
    name = data["main_metric"]
    value = data.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise SoftpromptError(f"--metrics {path}: main metric {name!r} has no numeric value")
    if data.get("task") not in (None, task):
        raise SoftpromptError(f"--metrics {path}: metrics are for task {data['task']!r}, not {task!r}")
    numeric = {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return name, float(value), {**numeric, "main_metric": name, "split": data.get("split")}


def code_version(repo: Path) -> str:
    """The commit the code was at (with `-dirty` if the checkout has uncommitted changes outside registry/)."""
    commit = git(repo, "rev-parse", "HEAD", check=False) or "unknown"
    dirty = git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".", f":!{REGISTRY_DIR}", check=False)
    return commit + ("-dirty" if dirty else "")


def data_version(repo: Path, task: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The data the prompt was trained on: training's record, plus DVC's hash from dvc.lock when present."""
    out = dict(meta.get("data") or {})
    content = meta.get("data_content") or {}  # the pipeline's validated data: content fingerprint and location
    if content.get("fingerprint"):
        out["fingerprint"] = content["fingerprint"]
        out["location"] = content.get("location")
    lock = repo / "dvc.lock"
    if lock.is_file():
        with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
            for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
                for item in stage.get("outs", []):
                    if item.get("path", "").rstrip("/") == f"data/validated/{task}":
                        out["dvc"] = {"path": item["path"], "md5": item.get("md5")}
    return out


def _copy_prompt(src: Path, dest: Path, lineage: dict[str, Any]) -> None:
    """Copy the prompt's files (not checkpoints or hidden files) to `dest`, with lineage in softprompt.json."""
    with atomic_dir(dest) as tmp:
        for path in sorted(src.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, tmp / path.name)
        meta = json.loads((tmp / META_FILE).read_text(encoding="utf-8"))
        meta["registry"] = lineage
        write_json(tmp / META_FILE, meta)


def _write_dvc_meta(dvc_file: Path, meta: dict[str, Any]) -> None:
    """Add a `meta:` block to a .dvc file (DVC keeps it and ignores it for hashing)."""
    data = yaml.safe_load(dvc_file.read_text())
    data["meta"] = meta
    dvc_file.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass
class Registration:
    task: str
    version: int
    tag: str
    md5: str
    main_metric: str
    value: float
    promoted: bool
    reason: str
    new: bool = True  # False: the prompt's content was already registered as `tag`; nothing was written


def prompt_md5(prompt_dir: str | Path) -> str:
    """The prompt's content hash: DVC's directory hash over its adapter files only. The registered copy's hash
    also covers softprompt.json (run id, timings, lineage), which differs on every run of the same prompt."""
    from softprompt.prompt import ADAPTER_FILES

    entries = [{"md5": file_md5(Path(prompt_dir) / name), "relpath": name} for name in sorted(ADAPTER_FILES)]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def find_content(repo: Path, task: str, content_md5: str) -> Version | None:
    """The registered version of `task` whose prompt content hash is `content_md5`, if any."""
    return next((v for v in versions(repo, task) if v.meta.get("prompt_md5") == content_md5), None)


def register(repo: str | Path | None, task: str, prompt_dir: str | Path, metrics_file: str | Path,
             run_id: str | None = None, policy: str | None = None, settings: Settings | None = None,
             code: str | None = None) -> Registration:
    """Add an immutable version of `task`'s prompt, push it to the DVC remote, commit and tag it, then promote
    it as `policy` says (auto: only past the metric gate)."""
    from softprompt.prompt import read_meta

    settings = settings or Settings.load()
    policy = policy or settings.promote
    if policy not in POLICIES:
        raise SoftpromptError(f"--promote {policy!r}: choose one of {', '.join(POLICIES)}")
    root, task = repo_root(repo), check_task(task)
    meta = read_meta(prompt_dir)
    if meta.get("task") not in (None, task):
        raise SoftpromptError(f"--prompt {prompt_dir}: this prompt was trained on {meta['task']!r}, not {task!r}")
    main_metric, value, metrics = read_metrics(Path(metrics_file), task)
    content_md5 = prompt_md5(prompt_dir)
    with registry_lock(root, settings.lock_timeout):
        if (known := find_content(root, task, content_md5)) is not None:
            return _already_registered(known, content_md5, main_metric, value, data_version(root, task, meta))
        config_files = ensure_dvc(root, settings)
        number = next_number(root, task)
        lineage = {
            "task": task, "version": semver(number), "artifact": artifact(task),
            "base_model": meta["base_model"], "base_fingerprint": meta["base_fingerprint"],
            "data": data_version(root, task, meta), "code_version": code or code_version(root),
            "params": {"model": meta["base_model"], "prompt_length": meta.get("prompt_length"),
                       "init": meta.get("init"), "train": meta.get("train")},
            "metrics": metrics, "main_metric": main_metric, "value": value, "prompt_md5": content_md5,
            "run_id": run_id or os.environ.get("SOFTPROMPT_RUN_ID") or "manual",
            "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        dest = task_dir(root, task) / f"v{number}"
        _copy_prompt(Path(prompt_dir), dest, lineage)
        with dvc_repo(root) as dvc:
            dvc.add([str(dest)])
            # Push before committing: a version in git always has its files in the remote.
            dvc.push(targets=[str(dest)])
        dvc_file = dest.with_name(dest.name + ".dvc")
        _write_dvc_meta(dvc_file, {**{k: lineage[k] for k in ("task", "version", "main_metric", "value", "run_id",
                                                              "code_version", "registered_at", "base_model",
                                                              "prompt_md5")},
                                   "data_fingerprint": lineage["data"].get("fingerprint"),
                                   "data_files": lineage["data"].get("files"),  # `registry show`: the data version
                                   "metrics": {k: v for k, v in metrics.items()  # `registry show`: the scores
                                               if isinstance(v, float)}})  # (counts and settings are ints)
        md5 = read_dvc_file(dvc_file.read_text(), str(dvc_file))["md5"]
        commit = _commit(root, f"registry: register {artifact(task)} {semver(number)} ({main_metric}={value:g})",
                         [_rel(root, dvc_file), _rel(root, dest.parent / ".gitignore"), *config_files])
        _gto_register(root, task, number, commit, lineage)
        promoted, reason = _promote_locked(root, task, number, policy, settings)
    return Registration(task, number, f"{artifact(task)}@{semver(number)}", md5, main_metric, value, promoted, reason)


def _already_registered(known: Version, content_md5: str, main_metric: str, value: float,
                        data: dict[str, Any]) -> Registration:
    tag = f"{artifact(known.task)}@{semver(known.number)}"
    data_note = f", data fingerprint {data['fingerprint']}" if data.get("fingerprint") else ""
    reason = (f"nothing new registered: this prompt's content (md5 {content_md5}{data_note}) is already "
              f"registered as {tag}")
    log.info(reason)
    return Registration(known.task, known.number, tag, known.md5, main_metric, value, False, reason, new=False)


def _gto_register(repo: Path, task: str, number: int, commit: str, lineage: dict[str, Any]) -> None:
    import gto.api

    summary = f"{lineage['main_metric']}={lineage['value']:g} run={lineage['run_id']} code={lineage['code_version']}"
    gto.api.register(str(repo), artifact(task), commit, version=semver(number),
                     message=f"Register {artifact(task)} {semver(number)}: {summary}")


# ---------------------------------------------------------------------------------------------- promotion


def gate(candidate: Version, current: Version | None, margin: float) -> tuple[bool, str]:
    """Whether `candidate` may replace `current` in production: its main metric must beat it by `margin`."""
    if current is None:
        return True, f"{candidate.task} has no production prompt yet"
    if current.md5 == candidate.md5:  # same content (also: the very same version)
        return False, f"{candidate.name} is already in production ({current.name})"
    if candidate.main_metric != current.main_metric or candidate.value is None or current.value is None:
        return False, (f"cannot compare {candidate.name} ({candidate.main_metric}) with production {current.name} "
                       f"({current.main_metric}); promote with --force")
    if candidate.value > current.value + margin:
        return True, (f"{candidate.main_metric} {candidate.value:g} beats production {current.name} "
                      f"({current.value:g}) by more than {margin:g}")
    return False, (f"{candidate.main_metric} {candidate.value:g} does not beat production {current.name} "
                   f"({current.value:g}) by more than {margin:g}")


def promote(repo: str | Path | None, task: str, version: str | int, force: bool = False,
            settings: Settings | None = None) -> tuple[bool, str]:
    """Make a version the task's production prompt if it passes the gate (or `force`); returns (promoted, why)."""
    settings = settings or Settings.load()
    root, task = repo_root(repo), check_task(task)
    number = parse_version(version)
    with registry_lock(root, settings.lock_timeout):
        return _promote_locked(root, task, number, "force" if force else "auto", settings)


def _promote_locked(root: Path, task: str, number: int, policy: str, settings: Settings) -> tuple[bool, str]:
    if policy == "never":
        return False, "promotion disabled (--promote never)"
    candidate = get_version(root, task, number, settings.stage)
    current = production(root, task, settings.stage)
    ok, reason = gate(candidate, current, settings.promotion_margin)
    if policy == "force" and not (current and current.md5 == candidate.md5):
        ok, reason = True, "forced"
    if not ok:
        return False, reason
    if settings.remote_url().startswith("gs://"):
        from softprompt.registry_gcs import swap_production

        ok, reason = swap_production(settings.remote_url(), candidate, settings.promotion_margin, policy == "force")
        if not ok:
            return False, reason
    _update_production_copy(root, candidate)
    import gto.api

    # force: re-assigning a version that was in production before (a rollback) is allowed.
    gto.api.assign(str(root), artifact(task), settings.stage, version=semver(number), force=True,
                   message=f"Promote {artifact(task)} {semver(number)} to {settings.stage}: {reason}")
    return True, reason


def _update_production_copy(root: Path, version: Version) -> None:
    """Point registry/<task>/production(.dvc) at the version's content (same hash, so nothing is re-uploaded)."""
    src = task_dir(root, version.task) / version.name
    dest = task_dir(root, version.task) / PRODUCTION
    with dvc_repo(root) as dvc:
        if not src.is_dir() or dir_md5(src) != version.md5:
            dvc.pull(targets=[str(src)])
        with atomic_dir(dest) as tmp:
            for path in src.iterdir():
                shutil.copy2(path, tmp / path.name)
        dvc.add([str(dest)])
        dvc.push(targets=[str(dest)])
    dvc_file = dest.with_name(PRODUCTION + ".dvc")
    _write_dvc_meta(dvc_file, {**version.meta, "production": version.name})
    _commit(root, f"registry: {artifact(version.task)} {semver(version.number)} is production",
            [_rel(root, dvc_file), _rel(root, dest.parent / ".gitignore")])


# ---------------------------------------------------------------------------------------------- fetching


def pull(repo: str | Path | None, task: str, version: str | int | None = None, output: str | Path | None = None,
         stage: str = "prod") -> tuple[Path, Version]:
    """`dvc pull` a task's production prompt (or a given version) and refuse it unless its hash matches."""
    root, task = repo_root(repo), check_task(task)
    if version is None:
        chosen = production(root, task, stage)
        if chosen is None:
            raise SoftpromptError(f"{task} has no production prompt in {root}; register one with `softprompt register`")
        target = task_dir(root, task) / PRODUCTION
    else:
        chosen = get_version(root, task, parse_version(version), stage)
        target = task_dir(root, task) / chosen.name
    with dvc_repo(root) as dvc:
        dvc.pull(targets=[str(target)], force=True)
    verify(target, chosen.md5)
    if output is None:
        return target, chosen
    with atomic_dir(output) as tmp:
        for path in target.iterdir():
            shutil.copy2(path, tmp / path.name)
    verify(Path(output), chosen.md5)
    return Path(output), chosen


def verify(path: Path, md5: str) -> None:
    """Refuse a prompt directory whose content hash is not the one the registry recorded."""
    actual = dir_md5(path) if path.is_dir() else ""
    if actual != md5:
        raise SoftpromptError(f"{path}: files do not match the registered hash (recorded {md5}, got "
                              f"{actual or 'no files'}); the copy is corrupt or was modified, refusing it")


def summary_rows(repo: str | Path | None, task: str | None = None, stage: str = "prod") -> list[dict[str, Any]]:
    """`registry list` rows: one per version."""
    root = repo_root(repo)
    return [{"task": v.task, "version": v.name, "tag": f"{artifact(v.task)}@{semver(v.number)}",
             "main_metric": v.main_metric, "value": v.value, "stage": stage if v.production else "",
             "run_id": v.run_id, "registered_at": v.registered_at, "md5": v.md5}
            for v in versions(root, task and check_task(task), stage)]



# ------------------------------------------------------------------------------- a remote registry repo

def is_git_url(repo: str | None) -> bool:
    return bool(repo) and (repo.startswith(("https://", "http://", "ssh://", "git@", "file://")))


def authenticated(url: str) -> str:
    """An https URL with $GIT_TOKEN (mounted from a Kubernetes secret) as credentials; other URLs unchanged."""
    token = os.environ.get("GIT_TOKEN")
    if token and url.startswith("https://") and "@" not in url.split("/")[2]:
        return url.replace("https://", f"https://x-access-token:{token}@", 1)
    return url


def register_to_origin(url: str, task: str, prompt_dir: str | Path, metrics_file: str | Path,
                       attempts: int = 5, **kwargs: Any) -> Registration:
    """Register into a registry repo given by URL (pipeline pods): clone, register, push atomically.

    Pods in separate clones race only at the push: `git push --atomic` of the branch and the new tags
    either lands whole or not at all. A rejected push is retried from a fresh clone, so version numbers
    are assigned again on top of whatever the other pod pushed and nothing is lost.
    """
    import tempfile

    last = ""
    for _ in range(attempts):
        with tempfile.TemporaryDirectory(prefix="softprompt-registry-") as tmp:
            clone = Path(tmp) / "repo"
            proc = subprocess.run(["git", "clone", "-q", authenticated(url), str(clone)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SoftpromptError(f"cannot clone the registry repo {url}: {proc.stderr.strip()[-300:]}")
            before = {name for name, _, _ in _tags(clone)}
            result = register(clone, task, prompt_dir, metrics_file, **kwargs)
            new_tags = [f"refs/tags/{name}" for name, _, _ in _tags(clone) if name not in before]
            branch = git(clone, "rev-parse", "--abbrev-ref", "HEAD")
            push = subprocess.run(["git", "-C", str(clone), "push", "-q", "--atomic", "origin", f"HEAD:{branch}",
                                   *new_tags], capture_output=True, text=True)
            if push.returncode == 0:
                return result
            last = push.stderr.strip()[-300:]
    raise SoftpromptError(f"could not push the registration to {url} after {attempts} attempts: {last}")
