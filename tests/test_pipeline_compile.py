"""The compiled pipeline (KFP IR YAML from the real compiler) for each params.yaml profile: its DAG, the
registration condition, the ParallelFor over seeds, parameters and their defaults, and where each step is
scheduled (accelerators, node selectors, tolerations, resource requests, secrets, retries)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import run
from pipelines.prompt_tuning import PIPELINE_NAME
from softprompt.config import component_image, load_params

PROFILES = ("paper", "smoke", "local")
GPU_STEPS = ("lm-adapt", "train-prompt", "evaluate-prompts")
CPU_STEPS = ("validate-data", "register-prompt")


@pytest.fixture(scope="module", params=PROFILES)
def compiled(request, tmp_path_factory):
    """(profile, pipeline spec, platform spec) from `python -m pipelines.run compile` (in process)."""
    spec = tmp_path_factory.mktemp(request.param) / "prompt_tuning.yaml"
    assert run.main(["compile", "--profile", request.param, "--spec", str(spec)]) == 0
    docs = list(yaml.safe_load_all(spec.read_text()))
    assert len(docs) == 2
    return request.param, docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def expected_defaults(profile: str) -> dict:
    """Each pipeline parameter and the params.yaml value its default must equal."""
    p = load_params(profile)
    pipe = p["pipeline"]
    return {
        "task": pipe["task"], "model": p["model"], "data": pipe["data"], "data_root": pipe["data_root"],
        "reuse_validation": pipe["reuse_validation"],
        "lm_adapt_steps": pipe["lm_adapt_steps"],
        "lm_objective": p["lm_adapt"]["objective"], "lm_corpus": pipe["lm_corpus"],
        "lm_cache_root": pipe["lm_cache_root"], "prompt_length": p["prompt"]["length"], "init": p["prompt"]["init"],
        "steps": p["train"]["steps"], "batch_size": p["train"]["batch_size"],
        "learning_rate": p["train"]["optimizer"]["prompt"]["lr"],
        "seeds": [p["train"]["seed"] + i for i in range(pipe["num_prompts"])], "eval_mode": p["eval"]["mode"],
        "eval_split": p["eval"]["split"], "register_threshold": pipe["register_threshold"],
        "promote": p["registry"]["promote"], "promotion_margin": p["registry"]["promotion_margin"],
        "registry_repo": pipe["registry_repo"], "registry_remote": "", "profile": profile,
    }


def task_of(spec: dict, name: str) -> dict:
    """A task anywhere in the DAG (root, loop or condition sub-DAG)."""
    for dag in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]:
        if name in dag["tasks"]:
            return dag["tasks"][name]
    raise KeyError(name)


def executor(spec: dict, step: str) -> dict:
    return spec["deploymentSpec"]["executors"][task_of(spec, step)["componentRef"]["name"].replace("comp-", "exec-")]


def test_dag_five_steps_loop_condition(compiled):
    _, spec, _ = compiled
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    root = spec["root"]["dag"]["tasks"]
    loop = next(n for n in root if n.startswith("for-loop-"))
    cond = next(n for n in root if n.startswith("condition-"))
    assert set(root) == {"validate-data", "lm-adapt", "evaluate-prompts", loop, cond}
    deps = {name: sorted(t.get("dependentTasks", [])) for name, t in root.items()}
    assert deps == {"validate-data": [], "lm-adapt": [], loop: ["lm-adapt", "validate-data"],
                    "evaluate-prompts": [loop, "validate-data"], cond: ["evaluate-prompts"]}

    # ParallelFor: one train-prompt per entry of the `seeds` parameter, no parallelism cap
    assert root[loop]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--seeds"}
    assert root[loop]["inputs"]["parameters"]["pipelinechannel--seeds"] == {"componentInputParameter": "seeds"}
    assert "iteratorPolicy" not in root[loop]
    loop_dag = spec["components"][root[loop]["componentRef"]["name"]]["dag"]
    assert set(loop_dag["tasks"]) == {"train-prompt"}
    train = loop_dag["tasks"]["train-prompt"]
    item = root[loop]["parameterIterator"]["itemInput"]
    assert train["inputs"]["parameters"]["seed"] == {"componentInputParameter": item}
    assert set(train["inputs"]["artifacts"]) == {"base"}  # the data comes as parameters (see the caching test)
    assert train["inputs"]["artifacts"]["base"] == {"componentInputArtifact": "pipelinechannel--lm-adapt-model"}

    # Collected: evaluation gets the loop's prompts (a list)
    evaluate = root["evaluate-prompts"]["inputs"]["artifacts"]
    assert evaluate["prompts"] == {"taskOutputArtifact": {"outputArtifactKey": "pipelinechannel--train-prompt-prompt",
                                                          "producerTask": loop}}
    assert loop_dag["outputs"]["artifacts"]["pipelinechannel--train-prompt-prompt"]["artifactSelectors"] == [
        {"outputArtifactKey": "prompt", "producerSubtask": "train-prompt"}]
    assert set(evaluate) == {"prompts"}
    assert spec["components"]["comp-evaluate-prompts"]["inputDefinitions"]["artifacts"]["prompts"]["isArtifactList"]

    # dsl.If: registration only when the best prompt's score reaches register_threshold
    assert root[cond]["taskInfo"]["name"] == "passes-threshold"
    assert root[cond]["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-prompts-Output'] >= "
        "inputs.parameter_values['pipelinechannel--register_threshold']")
    params = root[cond]["inputs"]["parameters"]
    assert params["pipelinechannel--evaluate-prompts-Output"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "evaluate-prompts"}}
    assert params["pipelinechannel--register_threshold"] == {"componentInputParameter": "register_threshold"}
    cond_dag = spec["components"][root[cond]["componentRef"]["name"]]["dag"]
    assert set(cond_dag["tasks"]) == {"register-prompt"}
    register = cond_dag["tasks"]["register-prompt"]
    assert register["inputs"]["artifacts"] == {
        "prompt": {"componentInputArtifact": "pipelinechannel--evaluate-prompts-best_prompt"},
        "evaluation": {"componentInputArtifact": "pipelinechannel--evaluate-prompts-evaluation"}}
    assert register["inputs"]["parameters"]["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}


    # the pipeline's output is the best prompt's score
    assert spec["root"]["dag"]["outputs"]["parameters"]["Output"]["valueFromParameter"] == {
        "outputParameterKey": "Output", "producerSubtask": "evaluate-prompts"}


def test_caching_follows_the_data_content(compiled):
    """validate-data and registration are never cached; train and evaluate take the data's fingerprint and
    content-addressed location as parameters (KFP's cache key has parameter values, but only the names of input
    artifacts, which are new whenever an always-run step produces them)."""
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    loop = next(n for n in root if n.startswith("for-loop-"))
    # enableCache false is the proto default, so the compiler leaves cachingOptions empty
    assert task_of(spec, "validate-data")["cachingOptions"] == {}
    assert task_of(spec, "register-prompt")["cachingOptions"] == {}
    for step in ("lm-adapt", "train-prompt", "evaluate-prompts"):
        assert task_of(spec, step)["cachingOptions"] == {"enableCache": True}, step

    validate = spec["components"]["comp-validate-data"]
    assert validate["outputDefinitions"]["parameters"] == {"fingerprint": {"parameterType": "STRING"},
                                                           "location": {"parameterType": "STRING"}}
    assert root["validate-data"]["inputs"]["parameters"]["data_root"] == {"componentInputParameter": "data_root"}

    def from_validate(key: str) -> dict:
        return {"taskOutputParameter": {"outputParameterKey": key, "producerTask": "validate-data"}}

    evaluate = root["evaluate-prompts"]["inputs"]
    assert evaluate["parameters"]["data"] == from_validate("location")
    assert evaluate["parameters"]["data_fingerprint"] == from_validate("fingerprint")
    assert root[loop]["inputs"]["parameters"]["pipelinechannel--validate-data-location"] == from_validate("location")
    assert root[loop]["inputs"]["parameters"]["pipelinechannel--validate-data-fingerprint"] == from_validate(
        "fingerprint")
    train = task_of(spec, "train-prompt")["inputs"]
    assert train["parameters"]["data"] == {"componentInputParameter": "pipelinechannel--validate-data-location"}
    assert train["parameters"]["data_fingerprint"] == {
        "componentInputParameter": "pipelinechannel--validate-data-fingerprint"}
    for step in ("train-prompt", "evaluate-prompts"):
        comp = spec["components"][task_of(spec, step)["componentRef"]["name"]]["inputDefinitions"]
        assert comp["parameters"]["data_fingerprint"]["parameterType"] == "STRING", step
        assert "data" not in comp.get("artifacts", {}), step  # no artifact from the always-run validation


def test_parameters_default_to_params_yaml_and_are_described(compiled):
    profile, spec, _ = compiled
    declared = spec["root"]["inputDefinitions"]["parameters"]
    expected = expected_defaults(profile)
    assert set(declared) == set(expected)
    for name, value in expected.items():
        assert declared[name]["defaultValue"] == value, name  # ints compile to floats: 32.0 == 32
        assert declared[name]["isOptional"] is True
        assert len(declared[name].get("description", "")) > 10, f"{name} has no description"
    assert declared["seeds"]["parameterType"] == "LIST"
    assert declared["register_threshold"]["parameterType"] == "NUMBER_DOUBLE"


def test_every_step_runs_in_the_project_image(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 5
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == component_image(), name
        assert "pip install" not in " ".join(container["command"]), name  # kfp and softprompt are in the image


def test_scheduling_per_profile(compiled):
    profile, spec, platform = compiled
    cluster = load_params(profile)["cluster"]
    heavy, light = cluster["resources"]["heavy"], cluster["resources"]["light"]
    cpu_pool = cluster["cpu_pool"]["node_selector"]
    for step in GPU_STEPS + CPU_STEPS:
        res = executor(spec, step)["container"]["resources"]
        want = heavy if step in GPU_STEPS else light
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == (want["cpu"], want["memory"]), step
    for step in CPU_STEPS:
        exec_name = task_of(spec, step)["componentRef"]["name"].replace("comp-", "exec-")
        assert platform[exec_name]["nodeSelector"]["labels"] == cpu_pool, step
        assert "tolerations" not in platform[exec_name], step
        assert "accelerator" not in executor(spec, step)["container"]["resources"], step
        assert "retryPolicy" not in task_of(spec, step), step

    if profile == "paper":
        assert cluster["accelerator"] == "nvidia-l4"
        for step in GPU_STEPS:
            res = executor(spec, step)["container"]["resources"]
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu", step
            assert res["accelerator"]["resourceCount"] == "1", step
            exec_name = task_of(spec, step)["componentRef"]["name"].replace("comp-", "exec-")
            assert platform[exec_name]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert platform[exec_name]["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
            retry = task_of(spec, step)["retryPolicy"]  # spot GPU nodes get preempted
            assert retry["maxRetryCount"] == 3 and retry["backoffDuration"] == "120s", step
    else:
        assert cluster["accelerator"] == "none"
        for step in GPU_STEPS:
            assert "accelerator" not in executor(spec, step)["container"]["resources"], (profile, step)
            exec_name = task_of(spec, step)["componentRef"]["name"].replace("comp-", "exec-")
            assert "nodeSelector" not in platform.get(exec_name, {}), (profile, step)
            assert "tolerations" not in platform.get(exec_name, {}), (profile, step)
            assert "retryPolicy" not in task_of(spec, step), (profile, step)


def test_secrets(compiled):
    profile, spec, platform = compiled
    secrets = load_params(profile)["cluster"]["secrets"]
    hf = {"secretName": secrets["hf_token"]["name"], "optional": True,
          "keyToEnv": [{"secretKey": secrets["hf_token"]["key"], "envVar": "HF_TOKEN"}]}
    for exec_name in ("exec-lm-adapt", "exec-train-prompt"):
        (env,) = platform[exec_name]["secretAsEnv"]
        assert {k: env[k] for k in hf} == hf, exec_name
    for exec_name in ("exec-validate-data", "exec-evaluate-prompts"):
        assert "secretAsEnv" not in platform.get(exec_name, {}) and "secretAsVolume" not in platform.get(exec_name, {})
    register = platform["exec-register-prompt"]
    (git_token,) = register["secretAsEnv"]
    assert git_token["secretName"] == secrets["registry_git"]["name"]
    assert git_token["keyToEnv"] == [{"secretKey": "token", "envVar": "GIT_TOKEN"}]
    # the registrar's GCS key: only the registration step mounts it, and finds it through the env var
    gcs = secrets["registry_gcs"]
    (volume,) = register["secretAsVolume"]
    assert (volume["secretName"], volume["mountPath"], volume["optional"]) == (gcs["name"], gcs["mount_path"], False)
    container = spec["deploymentSpec"]["executors"]["exec-register-prompt"]["container"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {gcs["env"]: f"{gcs['mount_path']}/{gcs['key']}"}
    assert all("secretAsVolume" not in ex for name, ex in platform.items() if name != "exec-register-prompt")


def test_compile_command_writes_the_spec(tmp_path):
    """`python -m pipelines.run compile` (what `make pipeline-compile` runs), in a fresh interpreter."""
    spec = tmp_path / "out" / "prompt_tuning.yaml"
    proc = subprocess.run([sys.executable, "-m", "pipelines.run", "compile", "--spec", str(spec)],
                          cwd=Path(run.__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PROFILE"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {spec}"
    pipeline_doc = next(yaml.safe_load_all(spec.read_text()))
    assert pipeline_doc["pipelineInfo"]["name"] == PIPELINE_NAME
    # no profile: the paper recipe, and `profile` stays empty so the steps read params.yaml's top level
    declared = pipeline_doc["root"]["inputDefinitions"]["parameters"]
    assert declared["profile"]["defaultValue"] == ""
    assert declared["model"]["defaultValue"] == load_params()["model"]
    assert Path(run.__file__).resolve().parents[1] / "build" / "prompt_tuning.yaml" == run.DEFAULT_SPEC


def test_make_pipeline_compile_calls_the_compile_command():
    """`make pipeline-compile [PROFILE=]` is `python -m pipelines.run compile [--profile]` (dry run: writes nothing)."""
    repo = Path(run.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PROFILE"}
    cases = (([], "-m pipelines.run compile"), (["PROFILE=smoke"], "-m pipelines.run compile --profile smoke"))
    for extra, expected in cases:
        proc = subprocess.run(["make", "-n", "-C", str(repo), "pipeline-compile", *extra], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        (line,) = [x for x in proc.stdout.splitlines() if "pipelines.run" in x]
        assert line.strip().endswith(expected) and line.startswith(".venv/bin/python"), line
