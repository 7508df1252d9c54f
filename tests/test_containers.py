"""pipelines.containers without a Docker Engine: what each step's container may see (`make test-cluster` runs
the containers themselves, tests/cluster)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kfp.local import docker_task_handler

from pipelines import containers
from softprompt.errors import SoftpromptError


def executor(root: Path, task: str, inputs: dict[str, list[str]]) -> dict:
    """An executor input as kfp.local builds it: output file and artifacts under ROOT/RUN/TASK."""
    own = root / "run-1" / task
    return {"inputs": {"artifacts": {name: {"artifacts": [{"uri": uri} for uri in uris]}
                                     for name, uris in inputs.items()},
                       "parameterValues": {"data": str(root / "run-1" / "lm-adapt" / "model")}},
            "outputs": {"outputFile": str(own / "executor_output.json"),
                        "artifacts": {"metrics": {"artifacts": [{"uri": str(own / "metrics")}]}}}}


def command(executor_input: dict) -> list[str]:
    return ["sh", "-c", "python3 -m kfp.dsl.executor_main", "--executor_input", json.dumps(executor_input),
            "--function_to_execute", "evaluate_prompts"]


def test_a_step_mounts_its_declared_inputs_read_only_and_nothing_else_of_the_pipeline_root(tmp_path):
    root, shared = tmp_path / "root", tmp_path / "shared"
    prompts = [str(root / "run-1" / "train-prompt-0" / "prompt"), str(root / "run-1" / "train-prompt-1" / "prompt")]
    ex = executor(root, "evaluate-prompts", {"prompts": prompts, "in_shared": [str(shared / "data" / "RTE")],
                                             "remote": ["gs://bucket/runs/x"]})
    volumes = containers.mounts(containers.executor_input(command(ex)), [shared])
    assert volumes == {
        str(shared): {"bind": str(shared), "mode": "rw"},
        str(root / "run-1" / "evaluate-prompts"): {"bind": str(root / "run-1" / "evaluate-prompts"), "mode": "rw"},
        prompts[0]: {"bind": prompts[0], "mode": "ro"},
        prompts[1]: {"bind": prompts[1], "mode": "ro"},
    }
    # A path handed on as a string parameter (finding 1: meta["base_model"]) is not mounted: it does not exist there.
    assert not any(ex["inputs"]["parameterValues"]["data"].startswith(p) for p in volumes)
    assert str(root) not in volumes and str(root / "run-1") not in volumes


def test_declared_inputs_missing_here_are_named(tmp_path):
    present = tmp_path / "run-1" / "lm-adapt" / "model"
    present.mkdir(parents=True)
    ex = executor(tmp_path, "train-prompt", {"base": [str(present)], "gone": [str(tmp_path / "expired")]})
    assert containers.missing_inputs(ex) == [tmp_path / "expired"]


def test_a_command_without_an_executor_input_is_refused():
    with pytest.raises(SoftpromptError, match="no --executor_input JSON: only lightweight Python components"):
        containers.executor_input(["python", "-c", "print(1)"])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the image's user needs root")
def test_the_task_directory_belongs_to_the_image_user(tmp_path):
    ex = executor(tmp_path, "register-prompt", {})
    own = containers.prepare_task_dir(ex)
    assert own == tmp_path / "run-1" / "register-prompt"
    assert own.stat().st_uid == containers.IMAGE_USER == own.stat().st_gid


def test_the_strict_handler_replaces_dockers_only_while_active(tmp_path):
    original = docker_task_handler.DockerTaskHandler
    with containers.strict_containers("img:tag", [tmp_path]) as settings:
        assert docker_task_handler.DockerTaskHandler is not original
        assert issubclass(docker_task_handler.DockerTaskHandler, original)
        assert settings.image == "img:tag" and settings.shared == [tmp_path.resolve()]
    assert docker_task_handler.DockerTaskHandler is original
    with pytest.raises(SoftpromptError, match="outside strict_containers"):
        containers.run_step(command(executor(tmp_path, "t", {})), {})
