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

pytestmark = pytest.mark.pipeline  # compiles the KFP pipeline per profile (not in make test-fast)

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
    """Each pipeline parameter and the params.yaml value its default must equal in the cluster spec (storage
    settings from cluster.pipeline_defaults)."""
    p = load_params(profile)
    pipe, storage = p["pipeline"], p["cluster"]["pipeline_defaults"]
    return {
        "task": pipe["task"], "model": p["model"], "data": pipe["data"], "data_root": storage["data_root"],
        "reuse_validation": pipe["reuse_validation"],
        "lm_adapt_steps": pipe["lm_adapt_steps"],
        "lm_objective": p["lm_adapt"]["objective"], "lm_corpus": pipe["lm_corpus"],
        "lm_cache_root": storage["lm_cache_root"], "prompt_length": p["prompt"]["length"], "init": p["prompt"]["init"],
        "steps": p["train"]["steps"], "batch_size": p["train"]["batch_size"],
        "learning_rate": p["train"]["optimizer"]["prompt"]["lr"],
        "seeds": [p["train"]["seed"] + i for i in range(pipe["num_prompts"])], "eval_mode": p["eval"]["mode"],
        "eval_split": p["eval"]["split"], "register_threshold": pipe["register_threshold"],
        "promote": p["registry"]["promote"], "promotion_margin": p["registry"]["promotion_margin"],
        "registry_repo": storage["registry_repo"], "registry_remote": storage["registry_remote"], "profile": profile,
    }


def all_dags(spec: dict) -> list[dict]:
    return [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]


def task_of(spec: dict, name: str) -> dict:
    """A task anywhere in the DAG (root, loop or condition sub-DAG)."""
    for dag in all_dags(spec):
        if name in dag["tasks"]:
            return dag["tasks"][name]
    raise KeyError(name)


def dag_of(spec: dict, name: str) -> dict:
    """The sub-DAG of a loop or condition task."""
    return spec["components"][task_of(spec, name)["componentRef"]["name"]]["dag"]


def named(spec: dict, display: str) -> str:
    """The task name of a condition (dsl.If/Else name=...), e.g. 'data-passed' -> 'condition-7'."""
    (found,) = [n for dag in all_dags(spec) for n, t in dag["tasks"].items() if t["taskInfo"]["name"] == display]
    return found


def exec_name(spec: dict, step: str) -> str:
    return task_of(spec, step)["componentRef"]["name"].replace("comp-", "exec-")


def executor(spec: dict, step: str) -> dict:
    return spec["deploymentSpec"]["executors"][exec_name(spec, step)]


def test_dag_preflight_validate_then_gated_steps(compiled):
    _, spec, _ = compiled
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    root = spec["root"]["dag"]["tasks"]
    branches = next(n for n in root if n.startswith("condition-branches-"))
    assert set(root) == {"preflight", "validate-data", branches}
    assert root["validate-data"]["dependentTasks"] == ["preflight"]  # the CPU preflight runs before anything else
    assert "dependentTasks" not in root["preflight"]
    passed, failed = named(spec, "data-passed"), named(spec, "data-failed")
    assert set(dag_of(spec, branches)["tasks"]) == {passed, failed}

    # finding 6: validate-data outputs whether the data passed; the GPU steps run only then, else the run fails
    assert spec["components"]["comp-validate-data"]["outputDefinitions"]["parameters"]["passed"] == {
        "parameterType": "BOOLEAN"}
    assert task_of(spec, passed)["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--validate-data-passed'] == true")
    assert task_of(spec, failed)["triggerPolicy"]["condition"] == (
        "!(inputs.parameter_values['pipelinechannel--validate-data-passed'] == true)")
    assert set(dag_of(spec, failed)["tasks"]) == {"validation-failed"}
    assert task_of(spec, "validation-failed")["inputs"]["artifacts"]["validation"] == {
        "componentInputArtifact": "pipelinechannel--validate-data-validation"}
    gated = dag_of(spec, passed)["tasks"]
    loop = next(n for n in gated if n.startswith("for-loop-"))
    lm_branches = next(n for n in gated if n.startswith("condition-branches-"))
    threshold = named(spec, "passes-threshold")
    assert set(gated) == {"importer", lm_branches, loop, "evaluate-prompts", threshold}

    # finding 7: lm-adapt (a GPU step) only when lm_adapt_steps > 0; else base-as-is, a CPU step
    on, off = named(spec, "lm-adapt-on"), named(spec, "lm-adapt-off")
    assert task_of(spec, on)["triggerPolicy"]["condition"] == (
        "int(inputs.parameter_values['pipelinechannel--lm_adapt_steps']) > 0")
    assert set(dag_of(spec, on)["tasks"]) == {"lm-adapt"} and set(dag_of(spec, off)["tasks"]) == {"base-as-is"}
    one_of = spec["components"][task_of(spec, lm_branches)["componentRef"]["name"]]["dag"]["outputs"]["artifacts"]
    ((base_key, selectors),) = one_of.items()
    assert [s["producerSubtask"] for s in selectors["artifactSelectors"]] == [on, off]

    # ParallelFor: one train-prompt per entry of the `seeds` parameter, no parallelism cap
    assert gated[loop]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--seeds"}
    assert "iteratorPolicy" not in gated[loop]
    assert set(dag_of(spec, loop)["tasks"]) == {"train-prompt"}
    train = task_of(spec, "train-prompt")
    assert train["inputs"]["parameters"]["seed"] == {
        "componentInputParameter": gated[loop]["parameterIterator"]["itemInput"]}
    assert set(train["inputs"]["artifacts"]) == {"base", "data"}

    # finding 1: evaluation takes the same base artifact as training (a pod reads only declared inputs)
    evaluate = gated["evaluate-prompts"]["inputs"]
    assert evaluate["artifacts"]["base"] == {"taskOutputArtifact": {"outputArtifactKey": base_key,
                                                                    "producerTask": lm_branches}}
    assert gated[loop]["inputs"]["artifacts"][train["inputs"]["artifacts"]["base"]["componentInputArtifact"]] == \
        evaluate["artifacts"]["base"]
    assert evaluate["artifacts"]["prompts"] == {"taskOutputArtifact": {
        "outputArtifactKey": "pipelinechannel--train-prompt-prompt", "producerTask": loop}}
    assert set(evaluate["artifacts"]) == {"prompts", "base", "data"}
    inputs = spec["components"]["comp-evaluate-prompts"]["inputDefinitions"]
    assert inputs["artifacts"]["base"]["artifactType"]["schemaTitle"] == "system.Model"
    assert inputs["artifacts"]["prompts"]["isArtifactList"]
    assert evaluate["parameters"]["profile"] == {"componentInputParameter": "pipelinechannel--profile"}  # finding 7

    # dsl.If: registration only when the best prompt's score reaches register_threshold
    assert task_of(spec, threshold)["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-prompts-Output'] >= "
        "inputs.parameter_values['pipelinechannel--register_threshold']")
    assert set(dag_of(spec, threshold)["tasks"]) == {"register-prompt"}
    register = task_of(spec, "register-prompt")
    assert register["inputs"]["artifacts"] == {
        "prompt": {"componentInputArtifact": "pipelinechannel--evaluate-prompts-best_prompt"},
        "evaluation": {"componentInputArtifact": "pipelinechannel--evaluate-prompts-evaluation"}}
    assert register["inputs"]["parameters"]["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
    # finding 5: registration outputs a Model (the registry version) beside its Markdown summary
    outputs = spec["components"]["comp-register-prompt"]["outputDefinitions"]["artifacts"]
    assert outputs["registered"]["artifactType"]["schemaTitle"] == "system.Model"


def test_data_enters_through_the_importer(compiled):
    """Finding 5: one Dataset artifact per content-addressed location (reimport=False: the same URI is the same ML
    Metadata artifact, so an unchanged week keeps train's and evaluate's cache keys)."""
    _, spec, _ = compiled
    importer = executor(spec, "importer")["importer"]
    assert importer["artifactUri"] == {"runtimeParameter": "uri"}
    assert importer["typeSchema"]["schemaTitle"] == "system.Dataset"
    assert not importer.get("reimport", False)
    gated = dag_of(spec, named(spec, "data-passed"))["tasks"]
    assert gated["importer"]["inputs"]["parameters"]["uri"] == {
        "componentInputParameter": "pipelinechannel--validate-data-location"}
    from_importer = {"taskOutputArtifact": {"outputArtifactKey": "artifact", "producerTask": "importer"}}
    assert gated["evaluate-prompts"]["inputs"]["artifacts"]["data"] == from_importer
    loop = next(n for n in gated if n.startswith("for-loop-"))
    assert gated[loop]["inputs"]["artifacts"]["pipelinechannel--importer-artifact"] == from_importer
    for step in ("train-prompt", "evaluate-prompts"):
        comp = spec["components"][task_of(spec, step)["componentRef"]["name"]]["inputDefinitions"]
        assert comp["artifacts"]["data"]["artifactType"]["schemaTitle"] == "system.Dataset", step
        assert comp["parameters"]["data_fingerprint"]["parameterType"] == "STRING", step


def test_caching(compiled):
    """preflight, validate-data, validation-failed and registration are never cached; the cached steps take
    preflight's cache epoch, so no cache hit is older than cluster.cache_max_age_days (finding 7)."""
    _, spec, _ = compiled
    # enableCache false is the proto default, so the compiler leaves cachingOptions empty
    for step in ("preflight", "validate-data", "validation-failed", "register-prompt"):
        assert task_of(spec, step)["cachingOptions"] == {}, step
    for step in ("lm-adapt", "base-as-is", "train-prompt", "evaluate-prompts"):
        assert task_of(spec, step)["cachingOptions"] == {"enableCache": True}, step
    for step in ("lm-adapt", "train-prompt", "evaluate-prompts"):
        epoch = task_of(spec, step)["inputs"]["parameters"]["cache_epoch"]
        assert epoch.get("componentInputParameter", "").endswith("preflight-Output"), (step, epoch)
    assert spec["root"]["dag"]["tasks"]["preflight"]["inputs"]["parameters"]["cache_max_age_days"] == {
        "runtimeValue": {"constant": load_params()["cluster"]["cache_max_age_days"]}}


def test_train_checkpoints_under_the_pipeline_root(compiled):
    """Finding 3: durable storage every retry of the step reaches, not pod scratch."""
    _, spec, _ = compiled
    assert task_of(spec, "train-prompt")["inputs"]["parameters"]["checkpoint_root"] == {
        "runtimeValue": {"constant": "{{$.pipeline_root}}/checkpoints"}}


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


def test_cluster_spec_defaults_are_shared_storage(compiled):
    """Finding 2: the uploaded spec's defaults work on a cluster (a UI run with them passes preflight); the
    local pipeline keeps params.yaml's local defaults."""
    import inspect

    from pipelines.prompt_tuning import build_pipeline
    from softprompt.pipeline_steps import check_cluster_settings

    profile, spec, _ = compiled
    declared = {k: v["defaultValue"] for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    assert declared["data_root"].startswith("gs://") and declared["registry_remote"].startswith("gs://")
    assert declared["registry_repo"].startswith("https://")
    check_cluster_settings(declared)  # raises on a local path or an empty registry setting
    local = inspect.signature(build_pipeline(profile, on_cluster=False).pipeline_func).parameters
    pipe = load_params(profile)["pipeline"]
    assert local["data_root"].default == pipe["data_root"] and local["registry_repo"].default == pipe["registry_repo"]


def test_every_step_runs_in_the_project_image(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}" for s in ("preflight", "validate-data", "validation-failed", "lm-adapt",
                                                     "base-as-is", "importer", "train-prompt", "evaluate-prompts",
                                                     "register-prompt")}
    for name, ex in executors.items():
        if name == "exec-importer":
            continue  # run by the KFP driver, no container
        container = ex["container"]
        assert container["image"] == component_image(), name  # no digest recorded in this checkout's build/
        assert "pip install" not in " ".join(container["command"]), name  # kfp and softprompt are in the image


def test_image_by_digest_when_make_image_recorded_one(tmp_path, monkeypatch):
    """Finding 7: a recorded digest pins every step's image (the cache key and the code that runs agree)."""
    from softprompt import cluster

    digest = "sha256:" + "ab" * 32
    monkeypatch.setattr(cluster, "DIGEST_DIR", tmp_path)
    (tmp_path / "image-digest-cuda.txt").write_text(digest + "\n")
    spec_path = tmp_path / "spec.yaml"
    assert run.main(["compile", "--profile", "paper", "--spec", str(spec_path)]) == 0
    spec = next(yaml.safe_load_all(spec_path.read_text()))
    images = {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()
              if "container" in ex}
    assert set(images.values()) == {f"{load_params()['cluster']['image']}@{digest}"}, images
    (tmp_path / "image-digest-cuda.txt").write_text("latest\n")
    with pytest.raises(Exception, match="is not an image digest"):
        cluster.pinned_image("cuda")


STEP_KINDS = {"preflight": "light", "validate-data": "light", "validation-failed": "light", "base-as-is": "light",
              "register-prompt": "light", "lm-adapt": "heavy", "train-prompt": "heavy", "evaluate-prompts": "heavy"}


def test_scheduling_per_profile(compiled):
    profile, spec, platform = compiled
    cluster = load_params(profile)["cluster"]
    cpu_pool = cluster["cpu_pool"]["node_selector"]
    for step, kind in STEP_KINDS.items():
        want = cluster["resources"][kind]
        res = executor(spec, step)["container"]["resources"]
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == (
            want["cpu"], want["memory"], want["memory_limit"]), step
        # finding 7: every step has a timeout and a bounded scratch disk, from params.yaml cluster:
        k8s = platform[exec_name(spec, step)]
        assert k8s["activeDeadlineSeconds"] == str(cluster["timeouts"][step]), step
        assert k8s["emptyDirMounts"] == [{"mountPath": cluster["scratch_path"], "sizeLimit": want["scratch"],
                                          "volumeName": "scratch"}], step
        env = {e["name"]: e["value"] for e in executor(spec, step)["container"]["env"]}
        assert env["TMPDIR"] == env["HOME"] == cluster["scratch_path"], step
    for step in (s for s, kind in STEP_KINDS.items() if kind == "light"):
        assert platform[exec_name(spec, step)]["nodeSelector"]["labels"] == cpu_pool, step
        assert "tolerations" not in platform[exec_name(spec, step)], step
        assert "accelerator" not in executor(spec, step)["container"]["resources"], step  # base-as-is: no GPU
        assert "retryPolicy" not in task_of(spec, step), step

    if profile == "paper":
        assert cluster["accelerator"] == "nvidia-l4"
        for step in GPU_STEPS:
            res = executor(spec, step)["container"]["resources"]
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu", step
            assert res["accelerator"]["resourceCount"] == "1", step
            assert platform[exec_name(spec, step)]["nodeSelector"]["labels"] == {
                "cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert platform[exec_name(spec, step)]["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
            retry = task_of(spec, step)["retryPolicy"]  # spot GPU nodes get preempted
            assert retry["maxRetryCount"] == 3 and retry["backoffDuration"] == "120s", step
    else:
        assert cluster["accelerator"] == "none"
        for step in GPU_STEPS:
            assert "accelerator" not in executor(spec, step)["container"]["resources"], (profile, step)
            assert "nodeSelector" not in platform.get(exec_name(spec, step), {}), (profile, step)
            assert "tolerations" not in platform.get(exec_name(spec, step), {}), (profile, step)
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
    scratch = load_params(profile)["cluster"]["scratch_path"]
    assert env == {gcs["env"]: f"{gcs['mount_path']}/{gcs['key']}", "TMPDIR": scratch, "HOME": scratch}
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
