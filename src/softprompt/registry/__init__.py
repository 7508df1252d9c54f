"""The prompt registry: DVC holds each prompt's files, GTO git tags say which versions exist and which is in production.

Layout of a registry repo (this project's repo, or a clone given by `--repo`):

    registry/<task>/v<N>/          one immutable version (adapter + softprompt.json lineage), DVC-tracked
    registry/<task>/v<N>.dvc       its content hash (git), with a `meta:` summary (metric, run id, ...)
    registry/<task>/production/    a copy of the production version, so `dvc pull registry/<task>/production`
                                   fetches it in a fresh clone (same content hash: stored once in the remote)

A version is visible only once its tag exists; every write runs under a file lock in `.git/` and first
discards what a killed registration left behind, so nothing half-written shows.

The package, one concern a module (each imports only those before it, so there is no cycle):
`versions` (names, tags, the promotion gate), `git` (every git command, the lock, GTO's tags), `dvc` (the DVC
repo, hashes, verification), `lineage` (what a version records), `gcs_pointer` (a gs:// registry's production
pointer); this module puts them together as `register`, `promote`, `pull` and `list_versions`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from softprompt.config import Policy, RegistryConfig, check_choice, default_of
from softprompt.errors import SoftpromptError
from softprompt.io import copy_dir

# The submodules are imported before `versions` (the function) is defined below, so the package attribute
# `versions` stays the function; `softprompt.registry.versions` the module is still importable by name.
from softprompt.registry import dvc, lineage
from softprompt.registry import git as gitrepo
from softprompt.registry.dvc import dir_md5, prompt_md5, read_dvc_file, verify
from softprompt.registry.git import is_git_url, repo_root
from softprompt.registry.lineage import read_metrics
from softprompt.registry.versions import (
    PRODUCTION,
    REGISTRY_DIR,
    Registration,
    Version,
    artifact,
    check_task,
    gate,
    parse_version,
    semver,
    stage_numbers,
    version_tag,
    version_tags,
)

Settings = RegistryConfig  # the `registry:` section of params.yaml (softprompt.config)

__all__ = ["PRODUCTION", "REGISTRY_DIR", "Registration", "Settings", "Version", "artifact",
           "check_task", "code_version", "dir_md5", "gate", "get_version", "is_git_url", "list_versions", "location",
           "parse_version", "production", "production_numbers", "prompt_md5", "promote", "pull", "read_dvc_file",
           "read_metrics", "register", "register_to_origin", "repo_root", "semver", "summary_rows", "verify",
           "versions"]

log = logging.getLogger(__name__)


def _stage(stage: str | None) -> str:
    return stage or default_of(Settings, "stage")


def task_dir(repo: Path, task: str) -> Path:
    return repo / REGISTRY_DIR / task


def location(repo: str, task: str, number: int) -> str:
    """A version's place in the registry, as one URI: REPO#registry/<task>/v<N> (REPO: the registry's git URL or
    checkout). Not a storage URI on purpose: KFP's launcher uploads an output artifact whose URI is gs:// to the
    pipeline root's bucket, and fails on any other bucket; a URI it does not recognise it records as it is."""
    return f"{repo}#{REGISTRY_DIR}/{task}/v{number}"


def _rel(repo: Path, path: Path) -> str:
    return path.relative_to(repo).as_posix()


def code_version(repo: Path) -> str:
    """The commit the code was at (with `-dirty` if the checkout has uncommitted changes outside registry/)."""
    return gitrepo.code_version(repo, REGISTRY_DIR) or "unknown"


# ---- reading


def versions(repo: Path, task: str | None = None, stage: str | None = None) -> list[Version]:
    """Every registered (tagged) version, oldest first, with its recorded metric and production flag."""
    tags = gitrepo.tags(repo)
    prod = stage_numbers(tags, _stage(stage))
    found: list[Version] = []
    for t, n, commit, tag in version_tags(tags):
        if task and t != task:
            continue
        rel = f"{REGISTRY_DIR}/{t}/v{n}.dvc"
        info = read_dvc_file(gitrepo.show(repo, commit, rel), f"{tag}:{rel}")
        meta = info["meta"]
        found.append(Version(task=t, number=n, commit=commit, md5=info["md5"], main_metric=meta.get("main_metric", ""),
                             value=meta.get("value"), run_id=meta.get("run_id", ""),
                             registered_at=meta.get("registered_at", ""), production=prod.get(t) == n, meta=meta))
    return sorted(found, key=lambda v: (v.task, v.number))


def history(repo: str | Path | None, task: str, stage: str | None = None) -> list[dict[str, Any]]:
    """`registry show`: one row per version of `task`, oldest first; raises when the task has none."""
    from softprompt.registry import show

    root = repo_root(repo)
    found = versions(root, check_task(task), stage)
    if not found:
        raise SoftpromptError(f"{task}: no versions registered in {root}; register one with `softprompt registry "
                              "register` or `make pipeline-run`, or pass --repo with the registry's clone")
    return show.rows(found, _stage(stage))


def production_numbers(repo: Path, stage: str | None = None) -> dict[str, int]:
    """task -> version number in `stage` (default: registry.stage, production)."""
    return stage_numbers(gitrepo.tags(repo), _stage(stage))


def get_version(repo: Path, task: str, number: int, stage: str | None = None,
                found: list[Version] | None = None) -> Version:
    """Version `number` of `task` (among `found`, the task's versions when the caller has read them)."""
    found = versions(repo, task, stage) if found is None else found
    for v in found:
        if v.number == number:
            return v
    known = ", ".join(v.name for v in found) or "none"
    raise SoftpromptError(f"{task} has no version v{number} in {repo} (registered: {known}); "
                          "see `softprompt registry list`")


def production(repo: Path, task: str, stage: str | None = None,
               found: list[Version] | None = None) -> Version | None:
    """The task's version in `stage` (among `found`, as for get_version), or None."""
    found = versions(repo, task, stage) if found is None else found
    return next((v for v in found if v.production), None)


def list_versions(repo: str | Path | None, task: str | None = None, stage: str | None = None) -> list[Version]:
    """`softprompt registry list`: every version of the registry repo holding `repo` (or of one task)."""
    return versions(repo_root(repo), task and check_task(task), stage)


def summary_rows(repo: str | Path | None, task: str | None = None, stage: str | None = None) -> list[dict[str, Any]]:
    """`registry list` rows: one per version."""
    return [{"task": v.task, "version": v.name, "tag": v.tag, "main_metric": v.main_metric, "value": v.value,
             "stage": _stage(stage) if v.production else "", "run_id": v.run_id,
             "registered_at": v.registered_at, "md5": v.md5}
            for v in list_versions(repo, task, stage)]


def next_number(repo: Path, task: str) -> int:
    """1 + the highest version seen in tags or in the tree (an untagged commit's number is never reused)."""
    tagged = [v.number for v in versions(repo, task)]
    on_disk = [int(p.stem[1:]) for p in task_dir(repo, task).glob("v*.dvc") if p.stem[1:].isdigit()]
    return max([0, *tagged, *on_disk]) + 1


def find_content(repo: Path, task: str, content_md5: str) -> Version | None:
    """The registered version of `task` whose prompt content hash is `content_md5`, if any."""
    return next((v for v in versions(repo, task) if v.meta.get("prompt_md5") == content_md5), None)


# ---- writing


def register(repo: str | Path | None, task: str, prompt_dir: str | Path, metrics_file: str | Path,
             run_id: str | None = None, policy: str | None = None, settings: Settings | None = None,
             code: str | None = None, move_pointer: bool = True, commit_remote: bool = True) -> Registration:
    """Add an immutable version of `task`'s prompt, push it to the DVC remote, commit and tag it, then promote
    it as `policy` says (auto: only past the metric gate).

    `move_pointer=False` records the promotion in git only, leaving a gs:// remote's production pointer to the
    caller (register_to_origin moves it after its push lands). `commit_remote=False` keeps the DVC remote out
    of the repo's committed .dvc/config (it goes to the untracked .dvc/config.local)."""
    from softprompt.prompt import read_meta

    settings = settings or Settings.load()
    policy = policy or settings.promote
    check_choice(Policy, policy, "--promote")
    root, task = repo_root(repo), check_task(task)
    meta = read_meta(prompt_dir)
    if meta.get("task") not in (None, task):
        raise SoftpromptError(f"--prompt {prompt_dir}: this prompt was trained on {meta['task']!r}, not {task!r}")
    metrics = read_metrics(Path(metrics_file), task)
    content_md5 = prompt_md5(prompt_dir)
    with gitrepo.registry_lock(root, settings.lock_timeout):
        if (known := find_content(root, task, content_md5)) is not None:
            return _already_registered(known, content_md5, metrics, lineage.data_version(root, task, meta))
        config_files = dvc.ensure_dvc(root, settings.remote_url(), commit_remote)
        number = next_number(root, task)
        record = lineage.lineage(root, task, number, meta, metrics, content_md5, run_id, code or code_version(root))
        dest = task_dir(root, task) / f"v{number}"
        lineage.copy_prompt(Path(prompt_dir), dest, record)
        dvc.add_and_push(root, dest)  # before committing: a version in git always has its files in the remote
        dvc_file = dest.with_name(dest.name + ".dvc")
        md5 = dvc.write_meta(dvc_file, lineage.dvc_meta(record))
        summary = f"{record['main_metric']}={record['value']:g}"
        commit = gitrepo.commit(root, f"registry: register {artifact(task)} {semver(number)} ({summary})",
                                [_rel(root, dvc_file), _rel(root, dest.parent / ".gitignore"), *config_files])
        gitrepo.gto_register(root, task, number, commit, f"Register {artifact(task)} {semver(number)}: {summary} "
                                                         f"run={record['run_id']} code={record['code_version']}")
        promoted, reason = _promote_locked(root, task, number, policy, settings, move_pointer)
    return Registration(task, number, version_tag(task, number), md5, record["main_metric"], record["value"],
                        promoted, reason)


def _already_registered(known: Version, content_md5: str, metrics: tuple[str, float, dict[str, Any]],
                        data: dict[str, Any]) -> Registration:
    data_note = f", data fingerprint {data['fingerprint']}" if data.get("fingerprint") else ""
    reason = (f"nothing new registered: this prompt's content (md5 {content_md5}{data_note}) is already "
              f"registered as {known.tag}")
    log.info(reason)
    return Registration(known.task, known.number, known.tag, known.md5, metrics[0], metrics[1], False, reason,
                        new=False)


def promote(repo: str | Path | None, task: str, version: str | int, force: bool = False,
            settings: Settings | None = None) -> tuple[bool, str]:
    """Make a version the task's production prompt if it passes the gate (or `force`); returns (promoted, why)."""
    settings = settings or Settings.load()
    root, task = repo_root(repo), check_task(task)
    number = parse_version(version)
    with gitrepo.registry_lock(root, settings.lock_timeout):
        return _promote_locked(root, task, number, "force" if force else "auto", settings)


def _promote_locked(root: Path, task: str, number: int, policy: str, settings: Settings,
                    move_pointer: bool = True) -> tuple[bool, str]:
    if policy == "never":
        return False, "promotion disabled (--promote never)"
    found = versions(root, task, settings.stage)  # read once: the candidate and the current production
    candidate = get_version(root, task, number, settings.stage, found)
    ok, reason = gate(candidate, production(root, task, settings.stage, found), settings.promotion_margin,
                      policy == "force")
    if ok and move_pointer and settings.remote_url().startswith("gs://"):
        from softprompt.registry.gcs_pointer import swap_production

        ok, reason = swap_production(settings.remote_url(), candidate, settings.promotion_margin, policy == "force")
    if not ok:
        return False, reason
    _update_production_copy(root, candidate)
    gitrepo.gto_assign(root, task, number, settings.stage,
                       f"Promote {artifact(task)} {semver(number)} to {settings.stage}: {reason}")
    return True, reason


def _update_production_copy(root: Path, version: Version) -> None:
    """Point registry/<task>/production(.dvc) at the version's content (same hash, so nothing is re-uploaded)."""
    src = task_dir(root, version.task) / version.name
    dest = task_dir(root, version.task) / PRODUCTION
    if not src.is_dir() or dir_md5(src) != version.md5:
        dvc.pull(root, src)
    copy_dir(src, dest)
    dvc.add_and_push(root, dest)
    dvc_file = dest.with_name(PRODUCTION + ".dvc")
    dvc.write_meta(dvc_file, {**version.meta, "production": version.name})
    gitrepo.commit(root, f"registry: {artifact(version.task)} {semver(version.number)} is production",
                   [_rel(root, dvc_file), _rel(root, dest.parent / ".gitignore")])


# ---- fetching


def pull(repo: str | Path | None, task: str, version: str | int | None = None, output: str | Path | None = None,
         stage: str | None = None) -> tuple[Path, Version]:
    """`dvc pull` a task's production prompt (or a given version) and refuse it unless its hash matches."""
    root, task = repo_root(repo), check_task(task)
    if version is None:
        chosen = production(root, task, stage)
        if chosen is None:
            raise SoftpromptError(f"{task} has no production prompt in {root}; register one with "
                                  "`softprompt registry register`")
        target = task_dir(root, task) / PRODUCTION
    else:
        chosen = get_version(root, task, parse_version(version), stage)
        target = task_dir(root, task) / chosen.name
    dvc.pull(root, target, force=True)
    verify(target, chosen.md5)
    if output is None:
        return target, chosen
    copy_dir(target, output)
    verify(Path(output), chosen.md5)
    return Path(output), chosen


# ---- a remote registry repo


def register_to_origin(url: str, task: str, prompt_dir: str | Path, metrics_file: str | Path,
                       attempts: int = 5, settings: Settings | None = None, **kwargs: Any) -> Registration:
    """Register into a registry repo given by URL (pipeline pods): clone, register, push atomically, and only
    then move a gs:// remote's production pointer.

    Pods in separate clones race only at the push: `git push --atomic` of the branch and the new tags
    either lands whole or not at all. A rejected push is retried from a fresh clone, so version numbers
    are assigned again on top of whatever the other pod pushed and nothing is lost. The push is the commit
    point: the pointer moves after it (so it never names a version git lacks), and moving it again to the
    same version is a no-op, so a step retried after a lost pointer write finishes the job. The DVC remote
    is never committed into the registry repo: that repo's own .dvc/config says where its files live.
    """
    settings = settings or Settings.load()
    last = ""
    for _ in range(attempts):
        with tempfile.TemporaryDirectory(prefix="softprompt-registry-") as tmp:
            clone = gitrepo.clone(url, Path(tmp) / "repo")
            before = {name for name, _, _ in gitrepo.tags(clone)}
            result = register(clone, task, prompt_dir, metrics_file, settings=settings, move_pointer=False,
                              commit_remote=False, **kwargs)
            last = gitrepo.push_atomic(clone, [name for name, _, _ in gitrepo.tags(clone) if name not in before])
            if not last:
                return _move_pointer_after_push(result, settings, kwargs.get("policy") == "force")
    raise SoftpromptError(f"could not push the registration to {url} after {attempts} attempts: {last}")


def _move_pointer_after_push(result: Registration, settings: Settings, force: bool) -> Registration:
    """Point a gs:// remote's production pointer at a promotion git now holds (nothing to do otherwise)."""
    if not result.promoted or not settings.remote_url().startswith("gs://"):
        return result
    from dataclasses import replace

    from softprompt.registry.gcs_pointer import swap_production

    candidate = Version(task=result.task, number=result.version, commit="", md5=result.md5,
                        main_metric=result.main_metric, value=result.value)
    ok, reason = swap_production(settings.remote_url(), candidate, settings.promotion_margin, force)
    return result if ok else replace(result, promoted=False, reason=reason)
