"""What a registry version is, how GTO names it in git tags, and the promotion gate. Pure: no git, no DVC.

Versions and stages follow GTO's tag conventions: `<task>-prompt@v<N>.0.0` registers version N on the commit
that added it, `<task>-prompt#<stage>#<K>` assigns a stage (the highest K wins, so there is exactly one
production version per task).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from softprompt.errors import SoftpromptError

REGISTRY_DIR = "registry"
PRODUCTION = "production"
_TASK = r"(?P<task>[a-z0-9][a-z0-9_-]*)"
VERSION_TAG = re.compile(rf"^{_TASK}-prompt@v(?P<n>\d+)\.0\.0$")
STAGE_TAG = re.compile(rf"^{_TASK}-prompt#(?P<stage>[a-z0-9-]+)#(?P<k>\d+)$")


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

    @property
    def tag(self) -> str:
        return version_tag(self.task, self.number)


@dataclass
class Registration:
    """What `register` did: the version (new, or the one already holding this content) and its promotion."""

    task: str
    version: int
    tag: str
    md5: str
    main_metric: str
    value: float
    promoted: bool
    reason: str
    new: bool = True  # False: the prompt's content was already registered as `tag`; nothing was written


def artifact(task: str) -> str:
    return f"{task}-prompt"


def semver(number: int) -> str:
    """GTO versions are SemVer with a `v`; registry versions are whole numbers, so N -> vN.0.0."""
    return f"v{number}.0.0"


def version_tag(task: str, number: int) -> str:
    return f"{artifact(task)}@{semver(number)}"


def parse_version(text: str | int) -> int:
    """`3`, `v3` or `v3.0.0` -> 3."""
    match = re.fullmatch(r"v?(\d+)(\.0\.0)?", str(text).strip())
    if not match or int(match.group(1)) < 1:
        raise SoftpromptError(f"--version {text!r}: expected a version number like 3, v3 or v3.0.0")
    return int(match.group(1))


def check_task(task: str) -> str:
    if not re.fullmatch(_TASK, task):
        raise SoftpromptError(f"--task {task!r}: use a lower-case task name such as rte or cb")
    return task


def version_tags(tags: list[tuple[str, str, str]]) -> list[tuple[str, int, str, str]]:
    """(task, number, commit, tag) of every version tag among git's (tag, commit, subject) rows."""
    return [(m["task"], int(m["n"]), commit, tag) for tag, commit, _ in tags if (m := VERSION_TAG.match(tag))]


def stage_numbers(tags: list[tuple[str, str, str]], stage: str) -> dict[str, int]:
    """task -> version number in `stage`: the stage tag with the highest counter K, as GTO numbers them."""
    by_commit = {(task, commit): n for task, n, commit, _ in version_tags(tags)}
    latest: dict[str, tuple[int, str]] = {}
    for tag, commit, _ in tags:
        if (match := STAGE_TAG.match(tag)) and match["stage"] == stage:
            k = int(match["k"])
            if k > latest.get(match["task"], (0, ""))[0]:
                latest[match["task"]] = (k, commit)
    return {t: by_commit[(t, c)] for t, (_, c) in latest.items() if (t, c) in by_commit}


def gate(candidate: Version, current: Version | None, margin: float, force: bool = False) -> tuple[bool, str]:
    """Whether `candidate` may replace `current` in production: its main metric must beat it by `margin`.
    `force` skips the metric comparison (a rollback), never the identity check: the same content is not
    promoted over itself."""
    if current is not None and current.md5 == candidate.md5:  # same content (also: the very same version)
        return False, f"{candidate.name} is already in production ({current.name})"
    if force:
        return True, "forced"
    if current is None:
        return True, f"{candidate.task} has no production prompt yet"
    if candidate.main_metric != current.main_metric or candidate.value is None or current.value is None:
        return False, (f"cannot compare {candidate.name} ({candidate.main_metric}) with production {current.name} "
                       f"({current.main_metric}); promote with --force")
    beats = candidate.value > current.value + margin
    return beats, (f"{candidate.main_metric} {candidate.value:g} {'beats' if beats else 'does not beat'} production "
                   f"{current.name} ({current.value:g}) by more than {margin:g}")
