"""The multi-node train step: the Kubeflow Trainer TrainJob and the TPU JobSet, checked against the engines'
own CRD schemas (vendored under tests/crds/ with their source URLs), and the status stream."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from softprompt.config import component_image, load_params, params_path
from softprompt.errors import SoftpromptError
from softprompt.trainjob import (
    manifest,
    node_command,
    placement,
    tpu_jobset,
    train_job,
    wait_for,
)

CRDS = Path(__file__).parent / "crds"


def crd_schema(file: str, version: str) -> dict:
    """The openAPIV3Schema of one version of a CRD. The Kubernetes extensions (x-kubernetes-*, CEL rules) are
    not JSON Schema and are ignored: types, required fields, enums and patterns are what this checks."""
    doc = yaml.safe_load((CRDS / file).read_text())
    (served,) = [v for v in doc["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def validate(obj: dict, file: str, version: str) -> None:
    jsonschema.Draft7Validator(crd_schema(file, version)).validate(obj)


def cluster_params(**cluster) -> dict:
    params = copy.deepcopy(load_params())
    params["cluster"].update(cluster)
    return params


def gpu_2x4() -> dict:
    params = cluster_params(accelerator="nvidia-l4", accelerator_count=4, nodes=2)
    params["cluster"]["accelerators"]["nvidia-l4"]["machine_type"] = "g2-standard-48"  # 4 L4s per machine
    return params


def command() -> list[str]:
    return node_command("rte", "gs://b/data/rte/fp", "fp", "gs://b/base", "gs://b/out", "paper", {"steps": 10})


def test_trainjob_for_2_nodes_x_4_gpus():
    params = gpu_2x4()
    place = placement(params)
    assert (place.nodes, place.per_node, place.is_tpu) == (2, 4, False)
    job = manifest(train_job("softprompt-rte-s0-abc", command(), place, params, service_account="pipeline-runner"))

    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": "torch-distributed"}
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    heavy = params["cluster"]["resources"]["heavy"]
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": heavy["cpu"], "memory": heavy["memory"],
                                                        "nvidia.com/gpu": "4"},
                                           "limits": {"nvidia.com/gpu": "4"}}
    assert trainer["image"] == component_image(params)  # the CUDA image every GPU step runs
    assert trainer["command"][:5] == ["torchrun", "--module", "softprompt.trainjob", "node", "--task"]
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"  # the torch-distributed runtime's trainer job
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                   "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "pipeline-runner"
    validate(job, "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")


def test_the_crd_schema_refuses_a_malformed_trainjob():
    """The schema check bites: a string node count or a patch without its manager is refused."""
    params = gpu_2x4()
    job = manifest(train_job("j", command(), placement(params), params))
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        validate(bad, "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")
    bad = copy.deepcopy(job)
    del bad["spec"]["runtimePatches"][0]["manager"]
    with pytest.raises(jsonschema.ValidationError, match="'manager' is a required property"):
        validate(bad, "trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")


def test_one_gpu_or_no_accelerator_trains_in_the_step_pod():
    assert placement(cluster_params(accelerator="nvidia-l4", accelerator_count=1, nodes=1)) is None
    assert placement(cluster_params(accelerator="none")) is None
    single_host_tpu = cluster_params(accelerator="tpu-v5-lite-podslice", nodes=1)
    assert placement(single_host_tpu) is None  # the pod drives its host's 4 chips itself


@pytest.mark.parametrize(("cluster", "message"), [
    (dict(accelerator="none", nodes=2), "cluster.nodes > 1 needs cluster.accelerator"),
    (dict(accelerator="nvidia-l4", accelerator_count=4, nodes=1), "machine type g2-standard-8 has 1"),
    (dict(accelerator="nvidia-l4", nodes=0), "cluster.nodes: 0; use 1 or more"),
])
def test_impossible_placements_are_refused_with_the_field_to_fix(cluster, message):
    with pytest.raises(SoftpromptError, match=message):
        placement(cluster_params(**cluster))


def tpu_2x4() -> dict:
    params = cluster_params(accelerator="tpu-v5-lite-podslice", nodes=2)
    params["cluster"]["accelerators"]["tpu-v5-lite-podslice"]["node_selector"][
        "cloud.google.com/gke-tpu-topology"] = "2x4"  # 8 chips on 4-chip ct5lp-hightpu-4t hosts: 2 hosts
    return params


def test_tpu_jobset_for_a_2x4_slice_on_two_hosts():
    params = tpu_2x4()
    place = placement(params)
    assert (place.nodes, place.per_node, place.is_tpu) == (2, 4, True)
    cmd = node_command("rte", "gs://b/d", "fp", "gs://b/base", "gs://b/out", None, {}, tpu=True)
    jobset = manifest(tpu_jobset("softprompt-rte-tpu", cmd, place, params))

    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["kind"] == "JobSet"
    assert jobset["metadata"]["annotations"] == {"alpha.jobset.sigs.k8s.io/exclusive-topology":
                                                 "cloud.google.com/gke-nodepool"}
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert (replicated["replicas"], job["parallelism"], job["completions"]) == (1, 2, 2)  # one pod per host
    assert job["completionMode"] == "Indexed"  # GKE numbers the hosts (TPU_WORKER_ID) by completion index
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "2x4"}
    assert pod["tolerations"][0]["key"] == "google.com/tpu"
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"google.com/tpu": "4"}  # all of its host's chips
    assert {"name": "PJRT_DEVICE", "value": "TPU"} in container["env"]
    assert container["image"].endswith("-tpu")
    assert container["command"][:4] == ["python", "-m", "softprompt.trainjob", "node"]
    validate(jobset, "jobset.x-k8s.io_jobsets.yaml", "v1alpha2")


def test_a_tpu_node_count_must_match_the_slice():
    params = tpu_2x4()
    params["cluster"]["nodes"] = 3
    with pytest.raises(SoftpromptError, match="set cluster.nodes to 2"):
        placement(params)


class FakeApi:
    """CustomObjectsApi's get, answering a scripted sequence of TrainJob statuses."""

    def __init__(self, statuses: list[dict]):
        self.statuses = statuses
        self.calls = 0

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        status = self.statuses[min(self.calls, len(self.statuses) - 1)]
        self.calls += 1
        return {"metadata": {"name": name}, "status": status}


def cond(kind: str, reason: str, message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def test_wait_streams_each_condition_once_and_returns_on_complete():
    api = FakeApi([{}, {"conditions": [cond("Created", "JobsCreated")]},
                   {"conditions": [cond("Created", "JobsCreated")]},
                   {"conditions": [cond("Created", "JobsCreated"), cond("Complete", "JobsCompleted", "done")]}])
    lines: list[str] = []
    status = wait_for(api, "kubeflow", "j", say=lines.append, sleep=lambda s: None)
    assert api.calls == 4 and status["conditions"][-1]["type"] == "Complete"
    assert lines == ["trainjob j: Created=True JobsCreated", "trainjob j: Complete=True JobsCompleted done"]


def test_a_failed_job_raises_with_its_message_and_where_to_look():
    api = FakeApi([{"conditions": [cond("Failed", "JobsFailed", "node-0 OOMKilled")]}])
    with pytest.raises(SoftpromptError, match=r"kubeflow/j failed: node-0 OOMKilled; see `kubectl logs"):
        wait_for(api, "kubeflow", "j", say=lambda s: None, sleep=lambda s: None)


def test_a_job_that_never_ends_times_out():
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(SoftpromptError, match="did not finish in 300s"):
        wait_for(FakeApi([{}]), "kubeflow", "j", timeout_seconds=300, say=lambda s: None, sleep=lambda s: None,
                 clock=lambda: next(ticks))


def test_with_two_nodes_the_pipelines_train_step_only_submits_and_waits(tmp_path, monkeypatch):
    """The compiled pipeline: the train step lands on the CPU pool without a GPU (the TrainJob's pods get the
    GPUs), while LM adaptation and evaluation keep theirs."""
    from pipelines import run

    raw = yaml.safe_load(params_path().read_text())
    raw["cluster"]["nodes"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SOFTPROMPT_PARAMS", str(tmp_path / "params.yaml"))
    spec_path = tmp_path / "spec.yaml"
    assert run.main(["compile", "--profile", "paper", "--spec", str(spec_path)]) == 0
    spec, platform = yaml.safe_load_all(spec_path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    selectors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train-prompt"]["container"]["resources"]
    assert "accelerator" not in train
    assert (train["resourceCpuRequest"], train["resourceMemoryRequest"]) == (
        raw["cluster"]["resources"]["light"]["cpu"], raw["cluster"]["resources"]["light"]["memory"])
    assert selectors["exec-train-prompt"]["nodeSelector"]["labels"] == raw["cluster"]["cpu_pool"]["node_selector"]
    assert executors["exec-lm-adapt"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_the_engine_install_the_crds_and_the_models_are_one_release():
    """infra/trainer installs the Kubeflow Trainer release whose models (kubeflow-trainer-api) build the jobs
    and whose CRD the tests validate against."""
    from importlib.metadata import version

    release = f"v{version('kubeflow-trainer-api')}"
    doc = yaml.safe_load((INFRA / "trainer" / "kustomization.yaml").read_text())
    assert doc["resources"] == [f"github.com/kubeflow/trainer/manifests/overlays/{overlay}?ref={release}"
                                for overlay in ("manager", "runtimes")]
    header = (CRDS / "trainer.kubeflow.org_trainjobs.yaml").read_text().splitlines()[0]
    assert f"github.com/kubeflow/trainer/blob/{release}/manifests/base/crds/" in header


def test_the_pipeline_service_account_may_submit_and_watch_the_jobs():
    from softprompt.trainjob import JOBSET, PIPELINE_SERVICE_ACCOUNT, TRAINJOB

    role, binding = yaml.safe_load_all((INFRA / "kubeflow" / "trainjob-rbac.yaml").read_text())
    assert "trainjob-rbac.yaml" in yaml.safe_load((INFRA / "kubeflow" / "kustomization.yaml").read_text())["resources"]
    for kind in (TRAINJOB, JOBSET):
        (rule,) = [r for r in role["rules"] if r["apiGroups"] == [kind.group]]
        assert rule["resources"] == [kind.plural] and {"create", "get"} <= set(rule["verbs"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": PIPELINE_SERVICE_ACCOUNT,
                                    "namespace": "kubeflow"}]


def test_the_step_submits_the_job_waits_and_brings_back_rank0s_prompt(tmp_path, monkeypatch):
    from softprompt import gcs, trainjob

    raw = yaml.safe_load(params_path().read_text())
    raw["cluster"].update(nodes=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SOFTPROMPT_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setattr(trainjob, "current_namespace", lambda: "kubeflow")
    uploaded = tmp_path / "uploaded"  # what rank 0 wrote to the staging URI
    uploaded.mkdir()
    (uploaded / "softprompt.json").write_text('{"task": "rte", "steps_trained": 10}')
    (uploaded / "adapter_model.safetensors").write_bytes(b"weights")
    (uploaded / gcs.MANIFEST).write_text("{}")  # download_prefix's record of what it fetched
    monkeypatch.setattr(gcs, "download_prefix", lambda uri, root: uploaded if uri == "gs://b/p.trainjob" else None)

    class Api(FakeApi):
        created: list = []

        def create_namespaced_custom_object(self, group, version, namespace, plural, body):
            self.created.append((group, version, namespace, plural, body))

    api = Api([{"conditions": [cond("Complete", "JobsCompleted")]}])
    meta = trainjob.run_train_job("rte", "gs://b/data", "fp", "gs://b/base", tmp_path / "prompt", "gs://b/p.trainjob",
                                  None, 7, {"steps": 10}, api=api)
    (group, version, namespace, plural, body), = api.created
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "kubeflow", "trainjobs")
    assert body["spec"]["trainer"]["numNodes"] == 2
    command = body["spec"]["trainer"]["command"]
    assert command[command.index("--output") + 1] == "gs://b/p.trainjob"
    assert '"seed": 7' in command[command.index("--overrides") + 1]
    assert meta == {"task": "rte", "steps_trained": 10}
    assert (tmp_path / "prompt" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in (tmp_path / "prompt").iterdir()) == ["adapter_model.safetensors", "softprompt.json"]


def test_each_node_fetches_data_and_base_and_only_rank0_uploads(tmp_path, monkeypatch):
    from softprompt import gcs, pipeline_steps, trainjob

    calls: dict = {"upload": []}
    monkeypatch.setattr(pipeline_steps, "local_data", lambda task, data, work: Path(f"/local/{data[5:]}"))
    monkeypatch.setattr(pipeline_steps, "check_fingerprint",
                        lambda local, fp, location: calls.setdefault("checked", []).append((str(local), fp, location)))

    def download(uri: str, root: Path) -> Path:  # an lm-adapted checkpoint, as the lm-adapt step uploads it
        local = Path(root) / "copy-of" / uri[5:]
        local.mkdir(parents=True)
        (local / "config.json").write_text("{}")
        return local

    monkeypatch.setattr(gcs, "download_prefix", download)
    monkeypatch.setattr(pipeline_steps, "train_step",
                        lambda task, data, model, out, profile, data_meta, **kw: calls.update(
                            train=(task, str(data), str(model), profile, data_meta, kw)))
    monkeypatch.setattr(gcs, "upload_dir", lambda local, uri: calls["upload"].append(uri))
    args = dict(task="rte", data="gs://b/data", fingerprint="fp", base="gs://b/base", output="gs://b/out",
                overrides='{"seed": 3, "steps": 10}', profile="paper")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        trainjob.node(**args)
    task, data, model, profile, data_meta, kw = calls["train"]
    assert (task, data, profile) == ("rte", "/local/b/data", "paper")
    assert kw == {"seed": 3, "steps": 10, "base_name": "gs://b/base"}  # lineage names the base by its URI
    assert calls["checked"] == [("/local/b/data", "fp", "gs://b/data")] * 2  # every node refuses changed data
    assert model.endswith("copy-of/b/base") and data_meta == {"fingerprint": "fp", "location": "gs://b/data"}
    assert calls["upload"] == ["gs://b/out"]  # rank 0 only
