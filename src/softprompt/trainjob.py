"""Training over several nodes or GPUs from the pipeline: a Kubeflow Trainer `TrainJob`, or a JobSet for a TPU
slice that spans hosts.

When params.yaml `cluster:` asks for more than one node (`cluster.nodes`) or more than one GPU per node
(`cluster.accelerator_count`), the pipeline's train step does not train in its own pod: it submits a TrainJob,
streams its status until it ends, and downloads the prompt the job's rank 0 uploaded.

Why Kubeflow Trainer's TrainJob (v2, `trainer.kubeflow.org/v1alpha1`) rather than the training-operator's
PyTorchJob (`kubeflow.org/v1`): the training-operator is in maintenance (its last line is 1.9; its repository
now ships Trainer v2), while a TrainJob names a maintained runtime (`torch-distributed`, installed with the
engine) that sets torchrun's rendezvous for every node (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
PET_MASTER_ADDR), so a node only runs `torchrun`. It runs on JobSet, the controller a multi-host TPU slice needs
too (`tpu_jobset`), so one install serves both. The objects are built from the engine's own models
(`kubeflow-trainer-api` on PyPI, generated from its CRDs), not from hand-written YAML.

Node selectors, tolerations, images and resources come from `softprompt.cluster.accelerator_request`, as for
every other step. The job needs no volume: every node reads the validated data and the base from GCS, and rank 0
uploads the prompt to a staging URI the step then downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from softprompt.cluster import (
    RESOURCES,
    TPU_TOPOLOGY_LABEL,
    accelerator_request,
    machine,
    pool_request,
    topology_chips,
)
from softprompt.config import load_params
from softprompt.errors import SoftpromptError

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"  # Kubeflow Trainer's built-in ClusterTrainingRuntime for torchrun
NODE = "node"  # the runtime's replicated job (and container) that runs the trainer
MANAGER = "softprompt.dev/pipeline"  # who owns the runtime patch (the TrainJob API keys patches by manager)
JOBSET_GROUP, JOBSET_VERSION = "jobset.x-k8s.io", "v1alpha2"


@dataclass(frozen=True)
class Kind:
    """A custom resource the step submits and the condition type that says it finished."""

    group: str
    version: str
    plural: str
    done: str


TRAINJOB = Kind(GROUP, VERSION, PLURAL, "Complete")
JOBSET = Kind(JOBSET_GROUP, JOBSET_VERSION, "jobsets", "Completed")
PIPELINE_SERVICE_ACCOUNT = "pipeline-runner"  # every pipeline step's KSA (infra/kubeflow); the job's pods run as it
LABELS = {"app.kubernetes.io/part-of": "softprompt"}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Placement:
    """Where a multi-process training runs: `nodes` pods, each with `per_node` processes (one per GPU or TPU chip),
    on accelerator pool `accelerator` (its resource, node selector, taint and image)."""

    accelerator: str
    nodes: int
    per_node: int
    request: dict[str, Any]

    @property
    def is_tpu(self) -> bool:
        return RESOURCES.get(self.request["resource"]) == "tpu"


def placement(params: dict[str, Any] | None = None) -> Placement | None:
    """The multi-process placement params.yaml `cluster:` asks for, or None for a single-process step (no
    accelerator, or one node with one GPU, or one TPU host: that pod starts a process per chip itself)."""
    params = params or load_params()
    cluster = params["cluster"]
    name = cluster.get("accelerator") or "none"
    nodes = int(cluster.get("nodes", 1))
    if nodes < 1:
        raise SoftpromptError(f"cluster.nodes: {nodes}; use 1 or more")
    if name == "none":
        if nodes > 1:
            raise SoftpromptError("cluster.nodes > 1 needs cluster.accelerator: a GPU or TPU pool name")
        return None
    spec = cluster["accelerators"].get(name)
    if spec and RESOURCES.get(spec["resource"]) == "tpu":
        return _tpu_placement(name, spec, nodes, params)
    request = accelerator_request(name, params)
    if nodes == 1 and request["count"] == 1:
        return None
    per_machine = machine(spec["machine_type"])[2]
    if request["count"] > per_machine:
        raise SoftpromptError(f"cluster.accelerator_count: {request['count']} GPUs per node, but {name}'s machine "
                              f"type {spec['machine_type']} has {per_machine}; pick a machine type with "
                              f"{request['count']} (softprompt.cluster.MACHINES) or lower the count")
    return Placement(name, nodes, request["count"], request)


def _tpu_placement(name: str, spec: dict[str, Any], nodes: int, params: dict[str, Any]) -> Placement | None:
    """A TPU slice: one host (None: the step's own pod drives its chips) or `chips / chips per host` hosts."""
    chips = topology_chips(spec["node_selector"][TPU_TOPOLOGY_LABEL])
    per_host = machine(spec["machine_type"])[2]
    hosts = max(1, chips // per_host)
    if nodes not in (1, hosts):
        raise SoftpromptError(f"cluster.nodes: {nodes}, but accelerator {name}'s {chips}-chip slice has {hosts} "
                              f"host(s); set cluster.nodes to {hosts} or leave it at 1")
    if hosts == 1:
        return None
    return Placement(name, hosts, per_host, pool_request(spec, per_host, params))


# ------------------------------------------------------------------------------------------- the objects

def _pod_scheduling(place: Placement) -> dict[str, Any]:
    from kubeflow_trainer_api import models as m

    taint = place.request["taint"]
    return {"node_selector": {k: str(v) for k, v in place.request["node_selector"].items()},
            "tolerations": [m.IoK8sApiCoreV1Toleration(key=taint["key"], operator="Equal", value=str(taint["value"]),
                                                       effect=taint["effect"])]}


def _resources(place: Placement, params: dict[str, Any]) -> Any:
    from kubeflow_trainer_api import models as m

    heavy = params["cluster"]["resources"]["heavy"]
    q = m.IoK8sApimachineryPkgApiResourceQuantity
    requests = {"cpu": q(str(heavy["cpu"])), "memory": q(str(heavy["memory"])),
                place.request["resource"]: q(str(place.per_node))}
    return m.IoK8sApiCoreV1ResourceRequirements(requests=requests,
                                                limits={place.request["resource"]: q(str(place.per_node))})


def job_name(task: str, seed: int, output_uri: str) -> str:
    """A Kubernetes name (RFC 1123, at most 63 characters) for the job of one prompt, unique per output."""
    digest = hashlib.sha256(output_uri.encode()).hexdigest()[:10]
    return re.sub(r"[^a-z0-9-]+", "-", f"softprompt-{task}-s{seed}".lower())[:50].strip("-") + f"-{digest}"


def node_command(task: str, data: str, fingerprint: str, base: str, output: str, profile: str | None,
                 overrides: dict[str, Any], tpu: bool = False) -> list[str]:
    """What every node runs. On GPUs: torchrun (nodes, processes per node, node rank and rendezvous from the
    runtime's PET_* variables) starting `python -m softprompt.trainjob node` once per GPU. On a TPU host: that
    module once; it starts a process per local chip itself (softprompt.xla)."""
    launcher = ["python", "-m"] if tpu else ["torchrun", "--module"]
    return [*launcher, "softprompt.trainjob", "node", "--task", task, "--data", data, "--fingerprint", fingerprint,
            "--base", base, "--output", output, *(["--profile", profile] if profile else []),
            "--overrides", json.dumps(overrides, sort_keys=True)]


def train_job(name: str, command: list[str], place: Placement, params: dict[str, Any],
              service_account: str | None = None) -> Any:
    """The TrainJob (kubeflow_trainer_api model) that runs `command` on `place.nodes` nodes of the accelerator
    pool, `place.per_node` GPUs each, in the step image, with the pool's node selector and toleration."""
    from kubeflow_trainer_api import models as m

    pod = m.TrainerV1alpha1PodSpecPatch(**_pod_scheduling(place), service_account_name=service_account)
    patch = m.TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(template=m.TrainerV1alpha1JobSetTemplatePatch(
            spec=m.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[m.TrainerV1alpha1ReplicatedJobPatch(
                name=NODE, template=m.TrainerV1alpha1JobTemplatePatch(spec=m.TrainerV1alpha1JobSpecPatch(
                    template=m.TrainerV1alpha1PodTemplatePatch(spec=pod))))]))))
    return m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}", kind="TrainJob",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, labels=dict(LABELS)),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(name=RUNTIME, kind="ClusterTrainingRuntime", api_group=GROUP),
            trainer=m.TrainerV1alpha1Trainer(image=place.request["image"], command=command, num_nodes=place.nodes,
                                             num_proc_per_node=place.per_node,
                                             resources_per_node=_resources(place, params)),
            runtime_patches=[patch]))


def tpu_jobset(name: str, command: list[str], place: Placement, params: dict[str, Any],
               service_account: str | None = None) -> Any:
    """A JobSet (kubeflow_trainer_api's JobSet model) for a TPU slice spanning `place.nodes` hosts: one pod per
    host, each asking for all of its host's chips and running one process that drives them (PJRT_DEVICE=TPU,
    torch_xla's SPMD/PJRT runtime across hosts), all pods of the slice placed together
    (`exclusive-topology`), the JobSet restarting the whole slice if a host fails. Runs only on a real slice."""
    from kubeflow_trainer_api import models as m

    scheduling = _pod_scheduling(place)
    container = m.IoK8sApiCoreV1Container(
        name="tpu", image=place.request["image"], command=command,
        env=[m.IoK8sApiCoreV1EnvVar(name="PJRT_DEVICE", value="TPU")],
        ports=[m.IoK8sApiCoreV1ContainerPort(container_port=8471), m.IoK8sApiCoreV1ContainerPort(container_port=8080)],
        resources=_resources(place, params))
    pod = m.IoK8sApiCoreV1PodSpec(containers=[container], restart_policy="Never",
                                  node_selector=scheduling["node_selector"], tolerations=scheduling["tolerations"],
                                  service_account_name=service_account)
    job = m.IoK8sApiBatchV1JobSpec(parallelism=place.nodes, completions=place.nodes, completion_mode="Indexed",
                                   backoff_limit=0, template=m.IoK8sApiCoreV1PodTemplateSpec(spec=pod))
    return m.JobsetV1alpha2JobSet(
        api_version=f"{JOBSET_GROUP}/{JOBSET_VERSION}", kind="JobSet",
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, labels=dict(LABELS),
            annotations={"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}),
        spec=m.JobsetV1alpha2JobSetSpec(
            failure_policy=m.JobsetV1alpha2FailurePolicy(max_restarts=3),
            replicated_jobs=[m.JobsetV1alpha2ReplicatedJob(name="slice", replicas=1,
                                                           template=m.IoK8sApiBatchV1JobTemplateSpec(spec=job))]))


def manifest(obj: Any) -> dict[str, Any]:
    """The object as the Kubernetes API takes it (camelCase keys, unset fields left out)."""
    return json.loads(obj.to_json())


# ---------------------------------------------------------------------------------- submitting, waiting

def current_namespace() -> str:
    """The namespace of the pod this runs in (the pipeline's), where the job goes."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    return os.environ.get("POD_NAMESPACE", "kubeflow")


def wait_for(api: Any, namespace: str, name: str, kind: Kind = TRAINJOB, poll_seconds: float = 30.0,
             timeout_seconds: float = 7 * 86400, say: Callable[[str], None] = print,
             sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll job `name` (a TrainJob, or a JobSet) until its done (Complete/Completed) or Failed condition is true,
    printing each condition change (the status stream in the step's log). Returns the final status; a failure
    raises with the job's message."""
    seen: set[tuple[str, str, str]] = set()
    started = clock()
    while True:
        job = api.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        status = job.get("status") or {}
        for c in status.get("conditions") or []:
            key = (c.get("type", ""), c.get("status", ""), c.get("reason", ""))
            if key not in seen:
                seen.add(key)
                say(f"{kind.plural[:-1]} {name}: {key[0]}={key[1]} {key[2]} {c.get('message', '')}".rstrip())
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Failed" in true:
            message = next(c.get("message", "") for c in status["conditions"] if c.get("type") == "Failed")
            raise SoftpromptError(f"{kind.plural[:-1]} {namespace}/{name} failed: {message}; see `kubectl logs -n "
                                  f"{namespace} -l jobset.sigs.k8s.io/jobset-name={name}`")
        if kind.done in true:
            return status
        if clock() - started > timeout_seconds:
            raise SoftpromptError(f"{kind.plural[:-1]} {namespace}/{name} did not finish in {timeout_seconds:.0f}s")
        sleep(poll_seconds)


def run_train_job(task: str, data: str, fingerprint: str, base_uri: str, output: str | Path, staging_uri: str,
                  profile: str | None, seed: int, overrides: dict[str, Any], api: Any = None) -> dict[str, Any]:
    """The pipeline's train step on several nodes/GPUs: submit the TrainJob, stream its status, and download
    the prompt rank 0 uploaded to `staging_uri` into `output`. Returns its softprompt.json."""
    from softprompt import gcs
    from softprompt.io import copy_dir
    from softprompt.prompt import META_FILE

    params = load_params(profile)
    place = placement(params)
    if place is None:
        raise SoftpromptError("run_train_job: params.yaml cluster: asks for one process; train in the step's pod")
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    namespace = current_namespace()
    name = job_name(task, seed, staging_uri)
    command = node_command(task, data, fingerprint, base_uri, staging_uri, profile, {**overrides, "seed": seed},
                           tpu=place.is_tpu)
    build, kind = (tpu_jobset, JOBSET) if place.is_tpu else (train_job, TRAINJOB)
    account = os.environ.get("SOFTPROMPT_JOB_SERVICE_ACCOUNT", PIPELINE_SERVICE_ACCOUNT)
    job = manifest(build(name, command, place, params, account))
    api.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, job)
    print(f"submitted {kind.plural[:-1]} {namespace}/{name}: {place.nodes} node(s) x {place.per_node} "
          f"{place.accelerator}")
    wait_for(api, namespace, name, kind)
    local = gcs.download_prefix(staging_uri, tempfile.mkdtemp())
    copy_dir(local, output)
    (Path(output) / gcs.MANIFEST).unlink(missing_ok=True)  # the download's record, not part of the prompt
    return json.loads((Path(output) / META_FILE).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------- on every node

app = typer.Typer(help="What a TrainJob's nodes run (softprompt.trainjob).", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)


@app.command()
def node(task: Annotated[str, typer.Option()], data: Annotated[str, typer.Option()],
         fingerprint: Annotated[str, typer.Option()], base: Annotated[str, typer.Option()],
         output: Annotated[str, typer.Option(help="gs:// URI rank 0 uploads the prompt to")],
         overrides: Annotated[str, typer.Option(help="JSON: train_step's overrides")] = "{}",
         profile: Annotated[str | None, typer.Option()] = None) -> None:
    """One rank of the TrainJob: fetch the validated data, train (torchrun's ranks together), rank 0 uploads."""
    from softprompt import distributed, gcs
    from softprompt.pipeline_steps import base_reference, check_fingerprint, local_data, train_step

    work = Path(tempfile.mkdtemp(prefix="softprompt-node-"))
    local = local_data("", data, work / "data")  # the imported Dataset artifact's URI
    check_fingerprint(local, fingerprint, data)
    # the lm-adapt step's output artifact (a checkpoint, or a reference to the base model), on GCS
    model = gcs.download_prefix(base, work / "base") if base.startswith("gs://") else Path(base)
    train_step(task, local, model, work / "prompt", profile, base_name=base_reference(model, base),
               data_meta={"fingerprint": fingerprint, "location": data}, **json.loads(overrides))
    # rank 0 of torchrun's ranks, and on a TPU slice host 0 (GKE numbers the hosts in TPU_WORKER_ID)
    if distributed.is_main() and os.environ.get("TPU_WORKER_ID", "0") == "0":
        gcs.upload_dir(work / "prompt", output)


def main(argv: list[str] | None = None) -> int:
    from softprompt.cli import run_app

    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
