"""Run the pipeline with every step in its own container of the component image, as strict as KFP's launcher.

`make test-cluster` (infra/README.md "Build and run the image on one machine") runs the pipeline with kfp.local's
DockerRunner. That runner alone is laxer than a cluster in three ways this module removes:

- it bind-mounts the *whole* pipeline root into every container, so a step can open any other step's output by
  path. KFP's launcher (backend/src/v2/component/launcher_v2.go) downloads only the input artifacts the step
  declares and uploads its outputs after it exits. Here each container gets only: its declared input artifacts,
  read-only; its own task directory (executor output, output artifacts), read-write; and the `shared` storage
  that stands for the buckets every pod may reach (data_root, the registry, the DVC remote). A path a step did
  not declare does not exist in its container, as in a pod;
- it leaves the user to the runner's arguments: here each step runs as the image's user (10001), with HOME in
  its own container's filesystem (a fresh one per step, as in a pod), and host networking (this machine's
  Docker Engine has no bridge network);
- it starts containers with auto_remove and reports success when the container is already gone; here a step's
  exit status is always read before its container is removed;
- it passes the step's command as docker's CMD, after the image's ENTRYPOINT; a pod's `command` replaces the
  ENTRYPOINT, and so does this.

kfp.local picks its task handler by the runner's type (task_dispatcher.run_single_task_implementation), so the
strict handler replaces DockerTaskHandler while `strict_containers()` is active, as pipelines/run.py patches
kfp.local's loop expansion.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError

IMAGE_USER = 10001  # infra/docker/Dockerfile: `useradd --uid 10001`, `USER 10001`
# The image user's HOME (useradd --create-home), in each container's own filesystem: no step sees another's.
CONTAINER_HOME = "/home/softprompt"
STEP_ENV = {"HOME": CONTAINER_HOME, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class StepRecord:
    """One container's run: the task directory's name (kfp.local's task resource name), seconds, exit code, and
    the container's output (also printed as it came)."""

    task: str
    seconds: float
    exit_code: int
    container: str
    log: str = ""


@dataclass
class Settings:
    """What every step container gets: the image to run (in place of the spec's), the host directories that
    stand for shared storage (mounted read-write at the same path), and the record of the steps run so far."""

    image: str
    shared: list[Path]
    steps: list[StepRecord] = field(default_factory=list)


def executor_input(command: list[str]) -> dict[str, Any]:
    """The executor input kfp.local put into a lightweight component's command (`--executor_input JSON`)."""
    try:
        return json.loads(command[command.index("--executor_input") + 1])
    except (ValueError, IndexError) as e:
        raise SoftpromptError("the step's command has no --executor_input JSON: only lightweight Python "
                              "components run under pipelines.containers") from e


def task_dir(executor: dict[str, Any]) -> Path:
    """The step's own directory: where kfp.local expects its executor output and output artifacts."""
    return Path(executor["outputs"]["outputFile"]).parent


def input_artifact_paths(executor: dict[str, Any]) -> list[Path]:
    """Local paths of the artifacts the step declared as inputs (a Collected input lists several)."""
    paths = []
    for listing in executor.get("inputs", {}).get("artifacts", {}).values():
        for artifact in listing.get("artifacts", []):
            uri = artifact.get("uri", "")
            if uri and "://" not in uri:  # a remote URI (gs://) is fetched by the step itself, as in a pod
                paths.append(Path(uri))
    return paths


def mounts(executor: dict[str, Any], shared: list[Path]) -> dict[str, dict[str, str]]:
    """docker-py `volumes` for one step: its declared inputs read-only, its task directory and the shared storage
    read-write, each at its own path; nothing else of the pipeline root.

    Invariant: every mounted path is either shared, the step's task directory, or a declared input artifact.
    An input inside shared storage or inside the task directory is already visible, so it is not mounted again.
    """
    own = task_dir(executor)
    volumes = {str(p): {"bind": str(p), "mode": "rw"} for p in [*shared, own]}
    for path in input_artifact_paths(executor):
        if not any(path == p or p in path.parents for p in [*shared, own]):
            volumes[str(path)] = {"bind": str(path), "mode": "ro"}
    return volumes


def prepare_task_dir(executor: dict[str, Any]) -> Path:
    """Create the step's task directory, owned by the image's user so the step can write its outputs there."""
    own = task_dir(executor)
    own.mkdir(parents=True, exist_ok=True)
    for path in [own, *own.rglob("*")]:
        os.chown(path, IMAGE_USER, IMAGE_USER)
    return own


def missing_inputs(executor: dict[str, Any]) -> list[Path]:
    """Declared input artifacts that do not exist on this machine (kfp.local would mount an empty directory)."""
    return [p for p in input_artifact_paths(executor) if not p.exists()]


_settings: Settings | None = None


def run_step(command: list[str], env: dict[str, str]) -> int:
    """Run one step in a fresh container of the configured image; returns its exit code (read before the
    container is removed)."""
    import docker

    if _settings is None:
        raise SoftpromptError("pipelines.containers.run_step outside strict_containers()")
    executor = executor_input(command)
    own = prepare_task_dir(executor)
    if missing := missing_inputs(executor):
        print(f"declared input artifact(s) missing on this machine: {', '.join(map(str, missing))}")
        return 1
    client = docker.from_env()
    started = time.monotonic()
    container = client.containers.run(
        # entrypoint: a pod's `command` replaces the image's ENTRYPOINT (`softprompt`); docker's `command` would
        # only replace CMD and run `softprompt sh -c ...`, which is what kfp.local's own handler does
        image=_settings.image, entrypoint=command[:1], command=command[1:], detach=True,
        user=f"{IMAGE_USER}:{IMAGE_USER}",
        network_mode="host", environment={**env, **STEP_ENV}, volumes=mounts(executor, _settings.shared),
        labels={"softprompt.step": own.name, "softprompt.run": own.parent.name}, name=_container_name(own))
    lines = []
    try:
        for chunk in container.logs(stream=True, follow=True):
            lines.append(chunk.decode(errors="replace"))
            print(lines[-1], end="")
        code = int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
        client.close()
    seconds = time.monotonic() - started
    _settings.steps.append(StepRecord(own.name, round(seconds, 1), code, container.name, "".join(lines)))
    print(f"[{own.name}] exit {code} after {seconds:.1f} s (container {container.name}, user {IMAGE_USER})")
    return code


def _container_name(own: Path) -> str:
    """softprompt-<task>-<time>: unique, and findable by step name (`docker ps --filter name=softprompt-train`)."""
    return f"softprompt-{own.name}-{time.time_ns() % 10**12}"


@contextlib.contextmanager
def strict_containers(image: str, shared: list[Path]) -> Iterator[Settings]:
    """While active, kfp.local's DockerRunner runs each step through `run_step` in `image`."""
    from kfp.local import docker_task_handler, status

    global _settings

    class StrictDockerTaskHandler(docker_task_handler.DockerTaskHandler):
        def run(self) -> status.Status:
            code = run_step(self.full_command, self.env_vars)
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    original = docker_task_handler.DockerTaskHandler
    _settings = Settings(image=image, shared=[p.resolve() for p in shared])
    docker_task_handler.DockerTaskHandler = StrictDockerTaskHandler
    try:
        yield _settings
    finally:
        docker_task_handler.DockerTaskHandler = original
        _settings = None
