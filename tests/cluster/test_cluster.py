"""The pipeline with every step in its own container of the component image (`make test-cluster`).

infra/local/test-cluster.sh builds the CPU image from infra/docker/Dockerfile and runs this file with
SOFTPROMPT_CLUSTER_IMAGE naming it; without that (plain `make test`) every test here is skipped. Each step runs
through pipelines.containers: as the image's user, its own HOME, host networking, and only its declared input
artifacts mounted (KFP's launcher downloads nothing else). Shared storage, the stand-in for the buckets every pod
reaches, holds the task data, data_root, the registry checkout and its DVC remote.
"""

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import rte_rows, write_jsonl
from kfp import dsl, local
from kfp.dsl import Dataset, Input, Output
from kfp.local import config as kfp_local_config
from test_lm_adapt import write_corpus

from pipelines import containers, run
from softprompt.errors import SoftpromptError

IMAGE = os.environ.get("SOFTPROMPT_CLUSTER_IMAGE", "")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not IMAGE, reason="SOFTPROMPT_CLUSTER_IMAGE is not set: run `make test-cluster`"),
              pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")]

LM_ADAPT_STEPS = 20  # the smoke profile's tiny model: seconds of LM adaptation, enough to make a new base
RESUME_STEPS = 60  # the kill-and-resume run: checkpoints every eval_every (15) steps, time to kill in between


def own(path: Path) -> None:
    """Hand a shared-storage tree to the image's user, as a bucket is writable by every step's identity."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, containers.IMAGE_USER, containers.IMAGE_USER)


def git(repo: Path, *args: str) -> str:
    # safe.directory: the checkout belongs to the image's user (the registration step commits to it)
    return subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Shared storage: RTE data, an LM corpus, an empty registry checkout; owned by the image's user."""
    root = tmp_path_factory.mktemp("cluster") / "shared"
    write_jsonl(root / "RTE" / "train.jsonl", rte_rows(40))
    write_jsonl(root / "RTE" / "val.jsonl", rte_rows(32, start=100))
    write_corpus(root / "corpus.txt")
    registry = root / "registry"
    registry.mkdir()
    git(registry, "init", "-q", "-b", "main")
    (registry / "README.md").write_text("registry\n")
    git(registry, "add", "README.md")
    git(registry, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    own(root)
    return root


@pytest.fixture
def kfp_local(monkeypatch, tmp_path):
    """kfp.local's global configuration restored after each test; the pipeline root under tmp_path."""
    monkeypatch.setattr(kfp_local_config.LocalExecutionConfig, "instance", None)
    monkeypatch.setattr(run, "LOCAL_ROOT", tmp_path / "runs")
    for name in ("KFP_HOST", "SOFTPROMPT_REGISTRY_REMOTE", "PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def print_steps(steps: list[containers.StepRecord], title: str) -> None:
    print(f"\n{title}\n" + "\n".join(f"  {s.task:<28} {s.seconds:>7.1f} s  exit {s.exit_code}" for s in steps))


# ---- strictness: an undeclared read fails, a declared one works --------------------------------------------------

@dsl.component(base_image=IMAGE or "unset", install_kfp_package=False)
def produce(out: Output[Dataset]) -> str:
    """Writes an artifact and hands on its *path* as a string (what finding 1's meta["base_model"] does)."""
    import os

    os.makedirs(out.path, exist_ok=True)
    with open(os.path.join(out.path, "rows.txt"), "w") as f:
        f.write("42\n")
    return out.path


@dsl.component(base_image=IMAGE or "unset", install_kfp_package=False)
def read_by_path(path: str) -> str:
    import os

    with open(os.path.join(path, "rows.txt")) as f:
        return f.read().strip()


@dsl.component(base_image=IMAGE or "unset", install_kfp_package=False)
def read_declared(data: Input[Dataset]) -> str:
    import os

    with open(os.path.join(data.path, "rows.txt")) as f:
        return f.read().strip()


@dsl.pipeline(name="undeclared-read")
def undeclared_read() -> str:
    made = produce()
    return read_by_path(path=made.outputs["Output"]).output


@dsl.pipeline(name="declared-read")
def declared_read() -> str:
    made = produce()
    return read_declared(data=made.outputs["out"]).output


def _run_small(pipeline, root: Path, shared: Path) -> tuple[bool, list[containers.StepRecord]]:
    local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
    with containers.strict_containers(IMAGE, [shared]) as settings:
        try:
            pipeline()
            return True, settings.steps
        except RuntimeError:
            return False, settings.steps


def test_a_step_reads_another_steps_output_only_if_declared(kfp_local, shared):
    ok, steps = _run_small(undeclared_read, kfp_local / "undeclared", shared)
    print_steps(steps, "undeclared read (path passed as a string):")
    assert not ok and [s.exit_code != 0 for s in steps] == [False, True], steps
    ok, steps = _run_small(declared_read, kfp_local / "declared", shared)
    print_steps(steps, "declared read (Input[Dataset]):")
    assert ok and [s.exit_code for s in steps] == [0, 0], steps


def test_each_step_runs_as_the_image_user_with_its_own_home(kfp_local, shared):
    @dsl.component(base_image=IMAGE, install_kfp_package=False)
    def whoami() -> str:
        import os

        marker = os.path.join(os.environ["HOME"], "marker")
        seen = os.path.exists(marker)  # a HOME shared with an earlier step would still have it
        os.makedirs(os.environ["HOME"], exist_ok=True)
        open(marker, "w").close()
        return f"{os.getuid()} {os.environ['HOME']} {seen}"

    @dsl.pipeline(name="whoami")
    def twice() -> str:
        first = whoami()
        return whoami().after(first).output

    local.init(runner=local.DockerRunner(), pipeline_root=str(kfp_local / "whoami"), raise_on_error=True)
    with containers.strict_containers(IMAGE, [shared]):
        result = twice()
    assert result.output == f"{containers.IMAGE_USER} {containers.CONTAINER_HOME} False"


# ---- the pipeline ---------------------------------------------------------------------------------------------

def pipeline_shared(shared: Path) -> list[Path]:
    """Storage every step reaches: `shared`, and the pipeline root's checkpoints/ (durable, under the pipeline
    root on a cluster too, where a retried train step finds them)."""
    checkpoints = run.LOCAL_ROOT / "rte" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    own(checkpoints)
    return [shared, checkpoints]


def pipeline_values(shared: Path, lm_adapt_steps: int) -> dict:
    return {"task": "rte", "profile": "smoke", "data": str(shared / "RTE"),
            "data_root": str(shared / "validated-data"), "registry_repo": str(shared / "registry"),
            "registry_remote": str(shared / "dvc-remote"), "lm_adapt_steps": lm_adapt_steps,
            "lm_corpus": str(shared / "corpus.txt")}


@pytest.mark.parametrize("lm_adapt_steps", [0, LM_ADAPT_STEPS], ids=["smoke", "smoke-lm-adapted"])
def test_pipeline_runs_with_each_step_in_its_own_container(kfp_local, shared, lm_adapt_steps):
    values = pipeline_values(shared, lm_adapt_steps)
    with containers.strict_containers(IMAGE, pipeline_shared(shared)) as settings:
        try:
            summary = run.run_local(values, "smoke", caching=False, runner=local.DockerRunner())
        finally:
            print_steps(settings.steps, f"TASK=rte PROFILE=smoke lm_adapt_steps={lm_adapt_steps}: each step's time")
    run.print_table(summary)
    print(f"registered version: {summary['registered']}")
    tasks = {s.task for s in settings.steps}
    assert {"validate-data", "train-prompt", "evaluate-prompts", "register-prompt"} <= tasks, tasks
    assert ("lm-adapt" in tasks) == (lm_adapt_steps > 0), tasks
    assert all(s.exit_code == 0 for s in settings.steps)
    assert summary["validation"] == "passed"
    assert str(summary["registered"]).startswith("rte"), summary["registered"]
    assert str(summary["registered"]).split(" ")[0] in git(shared / "registry", "tag", "--list")


# ---- a killed train step resumes from its checkpoint -------------------------------------------------------------

def kill_when_checkpointed(checkpoints: Path, step: str, stop: threading.Event, killed: list[str]) -> None:
    """Kill the `step` container once a complete checkpoint (the Trainer writes trainer_state.json into it
    last) is in durable storage: a preempted node, as far as the step can tell."""
    import docker

    client = docker.from_env()
    while not stop.is_set():
        done = sorted(p.parent.name for p in checkpoints.glob("**/checkpoint-*/trainer_state.json"))
        running = client.containers.list(filters={"label": f"softprompt.step={step}"})
        if done and running:
            for container in running:
                container.kill()
                killed.append(f"{container.name} after {done[-1]}")
            return
        stop.wait(0.5)


def test_a_killed_train_step_resumes_from_its_checkpoint(kfp_local, shared):
    values = {**pipeline_values(shared, 0), "steps": RESUME_STEPS, "seeds": [11]}
    stores = pipeline_shared(shared)
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_when_checkpointed, args=(stores[1], "train-prompt", stop, killed))
    with containers.strict_containers(IMAGE, stores) as first:
        watcher.start()
        try:
            with pytest.raises(SoftpromptError, match="Inner task failed: 'train-prompt'"):
                run.run_local(values, "smoke", runner=local.DockerRunner())
        finally:
            stop.set()
            watcher.join()
    print_steps(first.steps, f"killed: {killed}")
    assert killed and first.steps[-1].task == "train-prompt" and first.steps[-1].exit_code == 137
    with containers.strict_containers(IMAGE, stores) as second:
        summary = run.run_local(values, "smoke", runner=local.DockerRunner())
    print_steps(second.steps, "rerun:")
    (train,) = [s for s in second.steps if s.task == "train-prompt"]
    resumed = [line.strip() for line in train.log.splitlines() if "resuming from" in line]
    print("\n".join(resumed))
    # The Trainer may save one more checkpoint between the watcher's look and the kill landing: the rerun must
    # resume from the one seen complete or a later one, never start over.
    seen = int(killed[0].rsplit("checkpoint-", 1)[1])
    assert resumed, train.log[-3000:]
    assert int(resumed[0].rsplit("checkpoint-", 1)[1]) >= seen, resumed[0]
    assert train.exit_code == 0 and str(summary["registered"]).startswith("rte")


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    if IMAGE and shutil.which("docker") is None:
        pytest.fail("SOFTPROMPT_CLUSTER_IMAGE is set but no docker CLI is installed: run `make test-cluster`")
