"""infra/: the node pools carry what the pipeline asks for, least-privilege IAM, the image installs the lock,
and the Kubernetes manifests validate. No Docker engine, Terraform providers, cluster or network needed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import hcl2
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from softprompt import cluster
from softprompt.config import component_image, load_params

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
TF = INFRA / "terraform"
KF = INFRA / "kubeflow"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
K8S_VERSION = "1.32.0"  # the GKE REGULAR channel's minor at the time of writing; the schemas are bundled


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


merge_lock = _load(INFRA / "docker" / "merge_lock.py")  # a script the image's build stage runs, not a package


# ---- Terraform, as python-hcl2 parses it -------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """python-hcl2 keeps quotes around string literals and block labels and adds markers; drop them."""
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    """Every .tf file merged: {"resource": {type: {name: body}}, "variable": {...}, "output": {...}}."""
    out: dict[str, dict[str, Any]] = {"resource": {}, "variable": {}, "output": {}, "locals": {}}
    for path in sorted(TF.glob("*.tf")):
        with path.open() as f:
            doc = _clean(hcl2.load(f))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                out["resource"].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output"):
            for block in doc.get(kind, []):
                out[kind].update(block)
        for block in doc.get("locals", []):
            out["locals"].update(block)
    return out


@pytest.fixture(scope="module")
def tfvars() -> dict[str, Any]:
    return json.loads((TF / "node_pools.auto.tfvars.json").read_text())


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    value: Any = scope
    for part in path.split("."):
        value = value[part]
    return value


def resolve(expr: Any, scope: dict[str, Any]) -> Any:
    """Evaluate the references the node pools use (`${var.x.y}`, `${each.value.x}`, `gpu-${each.key}`)."""
    if not isinstance(expr, str):
        return expr
    whole = re.fullmatch(r"\$\{([a-z_][\w.]*)\}", expr)
    if whole:
        return _lookup(whole.group(1), scope)
    return re.sub(r"\$\{([a-z_][\w.]*)\}", lambda m: str(_lookup(m.group(1), scope)), expr)


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    blocks = body.get(name, [])
    assert len(blocks) == 1, f"expected one {name} block, got {len(blocks)}"
    return blocks[0]


def pool_nodes(tf: dict[str, Any], tfvars: dict[str, Any], accelerator: str) -> dict[str, Any]:
    """What a node of `accelerator`'s Terraform pool looks like to the scheduler: labels (set by Terraform
    plus those GKE derives), taints, the extended resource, accelerators per node, machine type."""
    pools = tf["resource"]["google_container_node_pool"]
    for kind, resource in (("gpu", "nvidia.com/gpu"), ("tpu", "google.com/tpu")):  # noqa: B007 (used after break)
        if accelerator in tfvars[f"{kind}_pools"]:
            body = pools[kind]
            assert body["for_each"] == f"${{var.{kind}_pools}}", f"the {kind} pools must come from var.{kind}_pools"
            scope = {"var": tfvars, "each": {"key": accelerator, "value": tfvars[f"{kind}_pools"][accelerator]}}
            break
    else:
        raise AssertionError(f"no Terraform node pool for accelerator {accelerator}")
    node = _block(body, "node_config")
    labels = dict(resolve(node.get("labels", {}), scope))
    assert not any(k.startswith(cluster.GKE_MANAGED_PREFIX) for k in labels), "GKE rejects cloud.google.com/ labels"
    machine_type = resolve(node["machine_type"], scope)
    if kind == "gpu":
        acc = _block(node, "guest_accelerator")
        labels[cluster.GPU_LABEL] = resolve(acc["type"], scope)
        per_node = resolve(acc["count"], scope)
    else:
        tpu_type, topology = cluster.TPU_MACHINES[machine_type]
        # Multi-host slices get their topology from the placement policy, single-host ones from the machine.
        placement = _block(body, "dynamic")["placement_policy"]
        assert placement["for_each"] == "${each.value.multi_host ? [each.value.tpu_topology] : []}"
        assert _block(placement, "content")["tpu_topology"] == "${placement_policy.value}"
        labels[cluster.TPU_LABEL] = tpu_type
        value = scope["each"]["value"]
        labels[cluster.TPU_TOPOLOGY_LABEL] = value["tpu_topology"] if value["multi_host"] else topology
        per_node = cluster.machine(machine_type)[2]
    taints = [{k: resolve(v, scope) for k, v in t.items()} for t in node.get("taint", [])]
    return {"name": resolve(body["name"], scope), "labels": labels, "taints": taints, "resource": resource,
            "per_node": per_node, "machine_type": machine_type, "body": body, "scope": scope}


def test_tfvars_are_generated_from_params():
    committed = (TF / "node_pools.auto.tfvars.json").read_text()
    assert committed == cluster.tfvars_json(), "params.yaml cluster: changed; run `make infra-tfvars` and commit"


def test_tfvars_follow_params_edits(tmp_path):
    params = load_params()
    params["cluster"]["accelerators"]["nvidia-l4"]["taint"] = {"key": "gpu", "value": "l4", "effect": "NoExecute"}
    params["cluster"]["cpu_pool"]["node_selector"] = {"team/pool": "light"}
    pools = cluster.node_pools(params)
    assert pools["gpu_pools"]["nvidia-l4"]["taint"] == {"key": "gpu", "value": "l4", "effect": "NO_EXECUTE"}
    assert pools["cpu_pool"]["labels"] == {"team/pool": "light"}
    tpu_selector = params["cluster"]["accelerators"]["tpu-v5-lite-podslice"]["node_selector"]
    tpu_selector[cluster.TPU_TOPOLOGY_LABEL] = "4x4"
    assert cluster.node_pools(params)["tpu_pools"]["tpu-v5-lite-podslice"]["multi_host"] is True
    tpu_selector[cluster.TPU_TOPOLOGY_LABEL] = "1x1"
    with pytest.raises(Exception, match="gives tpu-v5-lite-podslice 2x2 nodes"):
        cluster.node_pools(params)  # a single-host topology other than the machine's cannot be scheduled


def test_declared_variables_cover_the_generated_ones(tf, tfvars):
    assert set(tfvars) <= set(tf["variable"]), "a generated variable is not declared in variables.tf"


def _compiled(tmp_path: Path, monkeypatch, accelerator: str) -> tuple[dict, dict]:
    """Compile the pipeline with cluster.accelerator = `accelerator`: (pipeline spec, kubernetes platform spec)."""
    from kfp import compiler

    monkeypatch.syspath_prepend(str(ROOT))  # pipelines/ is a top-level package of the repository, not installed
    from pipelines.prompt_tuning import build_pipeline

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["cluster"]["accelerator"] = accelerator
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SOFTPROMPT_PARAMS", str(params_file))
    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(), str(out))
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("accelerator", sorted(load_params()["cluster"]["accelerators"]))
def test_accelerator_steps_land_on_their_node_pool(tf, tfvars, tmp_path, monkeypatch, accelerator):
    spec, executors = _compiled(tmp_path, monkeypatch, accelerator)
    pool = pool_nodes(tf, tfvars, accelerator)
    for step in ("exec-lm-adapt", "exec-train-prompt", "exec-evaluate-prompts"):
        k8s = executors[step]
        selector = k8s["nodeSelector"]["labels"]
        assert selector.items() <= pool["labels"].items(), f"{step}: {selector}; {pool['name']}: {pool['labels']}"
        for taint in pool["taints"]:
            effect = {v: k for k, v in cluster.TAINT_EFFECTS.items()}[taint["effect"]]
            assert {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": effect} in k8s[
                "tolerations"], f"{step} does not tolerate {pool['name']}'s taint {taint}"
        container = spec["deploymentSpec"]["executors"][step]["container"]
        assert container["image"] == cluster.accelerator_request(accelerator)["image"]
        assert container["resources"]["accelerator"]["resourceType"] == pool["resource"]
        assert int(container["resources"]["accelerator"]["resourceCount"]) <= pool["per_node"]


def _make_image(variant: str) -> str:
    return subprocess.run(["make", "-n", "image", f"VARIANT={variant}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def test_tpu_steps_run_the_tpu_image_on_every_chip_of_the_terraform_pool(tf, tfvars, tmp_path, monkeypatch):
    """Compiled with cluster.accelerator=tpu-v5-lite-podslice, each accelerator step asks for the image `make
    image VARIANT=tpu` builds, the TPU resource (all the chips of a node of the Terraform pool), that pool's
    accelerator and topology labels, and a toleration of its taint."""
    name = "tpu-v5-lite-podslice"
    spec, executors = _compiled(tmp_path, monkeypatch, name)
    pool = pool_nodes(tf, tfvars, name)
    built = re.search(r" -t (\S+) ", _make_image("tpu")).group(1)
    assert built == component_image() + "-tpu"
    chips = cluster.topology_chips(pool["labels"][cluster.TPU_TOPOLOGY_LABEL])
    assert chips == pool["per_node"] == 4  # a 2x2 v5e host: GKE schedules a TPU pod only if it asks for all 4
    for step in ("exec-lm-adapt", "exec-train-prompt", "exec-evaluate-prompts"):
        container = spec["deploymentSpec"]["executors"][step]["container"]
        assert container["image"] == built, step
        accelerator = container["resources"]["accelerator"]
        assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("google.com/tpu", "4"), step
        assert pool["resource"] == "google.com/tpu"
        selector = executors[step]["nodeSelector"]["labels"]
        assert selector == {cluster.TPU_LABEL: "tpu-v5-lite-podslice", cluster.TPU_TOPOLOGY_LABEL: "2x2"}, step
        assert selector.items() <= pool["labels"].items(), (step, pool["labels"])
        (taint,) = pool["taints"]
        assert executors[step]["tolerations"] == [{"key": taint["key"], "operator": "Equal", "value": taint["value"],
                                                   "effect": "NoSchedule"}], step
        assert taint == {"key": "google.com/tpu", "value": "present", "effect": "NO_SCHEDULE"}
    for step in ("exec-validate-data", "exec-register-prompt"):  # CPU steps keep the components' image
        assert spec["deploymentSpec"]["executors"][step]["container"]["image"] == component_image()


def test_a_tpu_step_is_one_host(monkeypatch):
    params = load_params()
    tpu = params["cluster"]["accelerators"]["tpu-v5-lite-podslice"]
    tpu["node_selector"][cluster.TPU_TOPOLOGY_LABEL] = "4x4"
    with pytest.raises(Exception, match="16-chip slice spans hosts, and a pipeline step is one pod"):
        cluster.accelerator_request("tpu-v5-lite-podslice", params)
    tpu["image"] = "rocm"
    tpu["node_selector"][cluster.TPU_TOPOLOGY_LABEL] = "2x2"
    with pytest.raises(Exception, match="image variant 'rocm': params.yaml cluster.images has cuda, cpu, tpu"):
        cluster.accelerator_request("tpu-v5-lite-podslice", params)


def test_light_steps_land_on_the_cpu_pool_and_gpu_pools_repel_them(tf, tfvars, tmp_path, monkeypatch):
    _, executors = _compiled(tmp_path, monkeypatch, load_params()["cluster"]["accelerator"])
    cpu = tf["resource"]["google_container_node_pool"]["cpu"]
    node = _block(cpu, "node_config")
    labels = resolve(node["labels"], {"var": tfvars})
    assert not node.get("taint"), "the CPU pool must take untolerating pods (light steps, KFP services)"
    for step in ("exec-validate-data", "exec-register-prompt"):
        assert executors[step]["nodeSelector"]["labels"].items() <= labels.items()
        assert not executors[step].get("tolerations"), f"{step} would be allowed onto accelerator pools"
    for name in list(tfvars["gpu_pools"]) + list(tfvars["tpu_pools"]):
        assert pool_nodes(tf, tfvars, name)["taints"], f"{name} pool has no taint: any pod could land there"


@pytest.mark.parametrize("accelerator", sorted(load_params()["cluster"]["accelerators"]))
def test_accelerator_pools_scale_from_zero_on_optional_spot(tf, tfvars, accelerator):
    pool = pool_nodes(tf, tfvars, accelerator)
    scaling = _block(pool["body"], "autoscaling")
    assert scaling["total_min_node_count"] == 0
    node = _block(pool["body"], "node_config")
    assert node["spot"] == "${var.spot}"
    assert _block(node, "workload_metadata_config")["mode"] == "GKE_METADATA"


def _heavy_fits(accelerator: str) -> bool:
    heavy = load_params()["cluster"]["resources"]["heavy"]
    cpu, mem = cluster.allocatable(load_params()["cluster"]["accelerators"][accelerator]["machine_type"])
    return cluster.quantity(heavy["cpu"]) <= cpu and cluster.quantity(heavy["memory"]) <= mem


@pytest.mark.parametrize("accelerator", sorted(load_params()["cluster"]["accelerators"]))
def test_heavy_steps_fit_on_their_pool_machine(accelerator):
    assert _heavy_fits(accelerator)


def test_allocatable_follows_gke_reservations():
    cpu, mem = cluster.allocatable("g2-standard-16")  # GKE docs: 15.89 CPU; memory 64 - 5.44 - eviction
    assert cpu == pytest.approx(15.89)
    assert mem == pytest.approx(64 - (1 + 0.8 + 0.8 + 48 * 0.06) - 0.1)
    assert cluster.quantity("500m") == 0.5 and cluster.quantity("16Gi") == pytest.approx(17.18, abs=0.01)


def test_cluster_uses_workload_identity(tf):
    gke = tf["resource"]["google_container_cluster"]["main"]
    assert _block(gke, "workload_identity_config")["workload_pool"] == "${var.project_id}.svc.id.goog"
    assert gke["remove_default_node_pool"] is True


def test_buckets_exist_locked_down(tf):
    buckets = tf["resource"]["google_storage_bucket"]
    assert set(buckets) == {"pipeline_root", "dvc", "registry"}
    for name, body in buckets.items():
        assert body["uniform_bucket_level_access"] is True, name
        assert body["public_access_prevention"] == "enforced", name
    assert _block(buckets["registry"], "versioning")["enabled"] is True


def _bucket_grants(tf) -> dict[tuple[str, str], set[str]]:
    """(bucket resource, GSA resource or member) -> roles."""
    grants: dict[tuple[str, str], set[str]] = {}
    for body in tf["resource"]["google_storage_bucket_iam_member"].values():
        bucket = re.fullmatch(r"\$\{google_storage_bucket\.(\w+)\.name\}", body["bucket"]).group(1)
        sa = re.fullmatch(r"serviceAccount:\$\{google_service_account\.(\w+)\.email\}", body["member"])
        grants.setdefault((bucket, sa.group(1) if sa else body["member"]), set()).add(body["role"])
    return grants


def test_only_the_registrar_writes_the_registry(tf):
    grants = _bucket_grants(tf)
    registry = {who: roles for (bucket, who), roles in grants.items() if bucket == "registry"}
    assert registry == {"registrar": {"roles/storage.objectUser"}}
    assert grants[("dvc", "pipeline")] == {"roles/storage.objectViewer"}, "training reads data, never writes it"
    assert grants[("pipeline_root", "pipeline")] == {"roles/storage.objectUser"}, "steps write their outputs"
    project_roles = {b["role"] for b in tf["resource"]["google_project_iam_member"].values()}
    project_roles |= set(tf["resource"]["google_project_iam_member"]["nodes"].get("for_each", []))
    assert not any("storage" in r or r in ("roles/editor", "roles/owner") for r in project_roles), project_roles


def test_workload_identity_bindings_match_the_kubeflow_service_accounts(tf):
    binding = tf["resource"]["google_service_account_iam_member"]["workload_identity"]
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:${var.project_id}.svc.id.goog[${var.kfp_namespace}/${each.value.ksa}]"
    local = tf["locals"]["workload_identity"]
    ksa_to_gsa = {v["ksa"]: re.fullmatch(r"\$\{google_service_account\.(\w+)\.name\}", v["gsa"]).group(1)
                  for v in local.values()}
    assert ksa_to_gsa == {"pipeline-runner": "pipeline", "softprompt-registrar": "registrar",
                          "ml-pipeline": "kfp", "ml-pipeline-ui": "kfp"}
    files = (KF / "workload-identity.yaml", KF / "registrar-serviceaccount.yaml")
    annotated = {doc["metadata"]["name"] for path in files
                 for doc in yaml.safe_load_all(path.read_text())
                 if "iam.gke.io/gcp-service-account" in doc["metadata"].get("annotations", {})}
    assert annotated == set(ksa_to_gsa), "every bound KSA needs its iam.gke.io annotation, and no other"
    assert tf["variable"]["kfp_namespace"]["default"] == "kubeflow"


def test_image_repository_is_the_one_params_names(tf, tfvars):
    repo = tf["resource"]["google_artifact_registry_repository"]["images"]
    scope = {"var": tfvars}
    ar = {k: resolve(repo[f], scope) for k, f in (("location", "location"), ("project", "project"),
                                                   ("repository", "repository_id"))}
    assert component_image().startswith(f"{ar['location']}-docker.pkg.dev/{ar['project']}/{ar['repository']}/")


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed")
def test_terraform_files_are_formatted():
    proc = subprocess.run(["terraform", "fmt", "-check", "-diff", str(TF)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- the image ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=DOCKERFILE.open("rb"))
    return parser


def test_dockerfile_is_multistage_and_runs_as_non_root(dockerfile):
    froms = [i for i in dockerfile.structure if i["instruction"] == "FROM"]
    assert [f["value"].split()[-1] for f in froms] == ["builder", "runtime"]
    runtime_start = froms[-1]["startline"]
    final = [i for i in dockerfile.structure if i["startline"] > runtime_start]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), "the runtime stage must switch to a non-root user"
    assert any(i["instruction"] == "COPY" and "--from=builder" in i["value"] for i in final)
    assert not any("pip" in i["value"] for i in final if i["instruction"] == "RUN"), "nothing installed at runtime"
    assert "HF_HOME=" in " ".join(i["value"] for i in final if i["instruction"] == "ENV")


def test_dockerfile_installs_exactly_the_lock_and_the_project(dockerfile):
    runs = [i["value"] for i in dockerfile.structure if i["instruction"] == "RUN"]
    installs = [cmd.strip() for run in runs for cmd in re.split(r"&&|;", run) if re.search(r"\bpip install\b", cmd)]
    assert len(installs) == 2, installs
    lock_install, project_install = installs
    assert re.fullmatch(r'pip install --extra-index-url "https://download\.pytorch\.org/whl/\$\{TORCH_VARIANT\}" '
                        r"-r requirements\.lock", lock_install), lock_install
    assert project_install == "pip install --no-deps --no-build-isolation .", project_install
    # Without build isolation the project is built by the setuptools the lock installs: it must be pinned there.
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert any(re.fullmatch(r"setuptools==[\d.]+", line) for line in lock), "requirements.lock must pin setuptools"
    copies = [i["value"].split() for i in dockerfile.structure
              if i["instruction"] == "COPY" and "--from" not in i["value"]]
    assert any("requirements.lock" in c[:-1] and c[-1] == "./" for c in copies), copies


def _locked(dockerfile: DockerfileParser, tmp_path: Path, build_args: list[str]) -> list[str]:
    """requirements.lock after the build stage's RUNs that rewrite it, with these `--build-arg`s."""
    env = {"PATH": "/usr/bin:/bin", **dict(a.split("=", 1) for a in build_args[1::2])}
    shutil.copy(ROOT / "requirements.lock", tmp_path / "requirements.lock")
    shutil.copy(ROOT / "requirements-xla.txt", tmp_path / "requirements-xla.txt")
    shutil.copy(INFRA / "docker" / "merge_lock.py", tmp_path / "merge_lock.py")
    for run in (i["value"] for i in dockerfile.structure if i["instruction"] == "RUN"):
        if "merge_lock.py" in run:
            subprocess.run(["bash", "-c", run.replace("python ", "python3 ")], cwd=tmp_path, env=env, check=True)
        elif "sed" in run:
            sed = next(cmd.strip() for cmd in run.split("&&") if cmd.strip().startswith("sed"))
            subprocess.run(["bash", "-c", sed], cwd=tmp_path, env=env, check=True)
    return (tmp_path / "requirements.lock").read_text().splitlines()


@pytest.mark.parametrize("variant", sorted(load_params()["cluster"]["images"]))
def test_dockerfile_changes_only_the_torch_line_of_the_lock_or_the_xla_pins(dockerfile, tmp_path, variant):
    build_args = cluster.build_args(variant)
    torch_build = dict(a.split("=", 1) for a in build_args[1::2])["TORCH_VARIANT"]
    before = (ROOT / "requirements.lock").read_text().splitlines()
    after = _locked(dockerfile, tmp_path, build_args)
    torch = next(line for line in before if line.startswith("torch=="))
    if variant != "tpu":
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(before) == len(after)
        assert changed == ([] if torch_build == "cpu" else [(torch, torch.replace("+cpu", f"+{torch_build}"))])
        return
    # The TPU image: requirements-xla.txt's pins instead of the lock's, the CPU build of its torch, the rest as locked.
    overrides = [line for line in (ROOT / "requirements-xla.txt").read_text().splitlines()
                 if line and not line.startswith("#")]
    pinned = {merge_lock.name(line) for line in overrides}
    assert {"torch", "torch-xla"} <= pinned
    assert [line for line in after if merge_lock.name(line) not in pinned | {None}] == [
        line for line in before if merge_lock.name(line) not in pinned]
    xla_torch = next(line for line in overrides if merge_lock.name(line) == "torch")
    assert [line for line in after if merge_lock.name(line) in pinned] == [
        f"{xla_torch}+cpu" if line == xla_torch else line for line in overrides]


def test_merge_lock_replaces_pins_by_normalised_name():
    lock = "Jinja2==3.1.6\ntorch==2.13.0+cpu\ntorch_xla==2.1.0\nzipp==3.0\n"
    merged = merge_lock.merge(lock, "# the XLA pins\ntorch==2.9.0\ntorch-xla[tpu]==2.9.0\n")
    assert merged.splitlines() == ["Jinja2==3.1.6", "zipp==3.0", "# the XLA pins", "torch==2.9.0",
                                   "torch-xla[tpu]==2.9.0"]
    with pytest.raises(SystemExit, match="pin nothing"):
        merge_lock.merge(lock, "# empty\n")


def test_dockerignore_lets_through_what_the_build_copies(dockerfile):
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore, "the context must be an allow-list (no .venv, data or runs in the image)"
    for instr in dockerfile.structure:
        if instr["instruction"] == "COPY" and "--from" not in instr["value"]:
            for src in instr["value"].split()[:-1]:
                assert src.rstrip("/").removeprefix("./") in allowed, f"{src} is copied but ignored"


def test_make_image_tags_what_the_pipeline_uses():
    out = subprocess.run(["make", "-n", "image-push", "VARIANT=cuda"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert f"-t {component_image()} " in out and f"docker push {component_image()}\n" in out
    assert "--build-arg TORCH_VARIANT=cu128" in out
    out = _make_image("cpu")
    assert "--build-arg TORCH_VARIANT=cpu" in out and f"-t {component_image()}-cpu " in out
    out = _make_image("tpu")
    for arg in ("TORCH_VARIANT=cpu", "LOCK_OVERRIDES=requirements-xla.txt", "PJRT_DEVICE=TPU"):
        assert f"--build-arg {arg} " in out, out
    assert f"-t {component_image()}-tpu " in out
    # An unknown variant stops at the check before `docker build`, naming the setting and the choices.
    proc = subprocess.run(["make", "image", "VARIANT=rocm"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "docker build" not in proc.stdout
    assert "image variant 'rocm': params.yaml cluster.images has cuda, cpu, tpu" in proc.stderr


def test_the_tpu_image_sets_pjrt_device_from_its_build_arg(dockerfile):
    froms = [i for i in dockerfile.structure if i["instruction"] == "FROM"]
    final = [i for i in dockerfile.structure if i["startline"] > froms[-1]["startline"]]
    assert "PJRT_DEVICE" in [i["value"].split("=")[0] for i in final if i["instruction"] == "ARG"]
    assert "PJRT_DEVICE=${PJRT_DEVICE}" in " ".join(i["value"] for i in final if i["instruction"] == "ENV")


# ---- Kubeflow -------------------------------------------------------------------------------------------------

def _manifests() -> list[Path]:
    return sorted(p for p in KF.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: str(p.relative_to(KF)))
def test_manifests_validate_against_the_kubernetes_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {e.message}")


@pytest.mark.parametrize("kustomization", sorted(KF.rglob("kustomization.yaml")), ids=lambda p: p.parent.name)
def test_kustomizations_pin_the_kfp_release_of_the_sdk(kustomization):
    doc = yaml.safe_load(kustomization.read_text())
    sdk = version("kfp")
    remote = [r for r in doc.get("resources", []) if r.startswith("github.com/")]
    assert remote, "expected the upstream Kubeflow Pipelines manifests"
    for ref in remote:
        release = re.fullmatch(r"github\.com/kubeflow/pipelines/manifests/kustomize/[\w/-]+\?ref=(\d+\.\d+\.\d+)", ref)
        assert release, f"{ref}: pin a release tag"
        assert release.group(1).split(".")[:2] == sdk.split(".")[:2], f"{ref} vs kfp SDK {sdk}"
    local = [r for r in doc.get("resources", []) if r not in remote] + [p["path"] for p in doc.get("patches", [])]
    for rel in local:
        assert (kustomization.parent / rel).is_file(), f"{kustomization}: {rel} is missing"


def test_gcp_env_keys_come_from_terraform(tf):
    doc = yaml.safe_load((KF / "kustomization.yaml").read_text())
    sources = {r["source"]["fieldPath"].removeprefix("data.") for r in doc["replacements"]}
    example = {line.split("=")[0] for line in (KF / "gcp.env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    output = tf["output"]["kubeflow_env"]["value"]
    from_terraform = set(re.findall(r"^\s*(\w+)=", output, flags=re.M))
    assert sources == example == from_terraform


@pytest.mark.parametrize("secret", sorted(load_params()["cluster"]["secrets"]))
def test_secret_templates_match_what_the_components_mount(secret):
    want = load_params()["cluster"]["secrets"][secret]
    path = KF / "secrets" / f"{want['name']}.template.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "Secret" and doc["metadata"]["name"] == want["name"]
    assert doc["metadata"]["namespace"] == "kubeflow"
    placeholder = want.get("placeholder", want["env"])
    assert doc["stringData"] == {want["key"]: f"${{{placeholder}}}"}, "a placeholder, never a value"
    assert "data" not in doc


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
def test_overlay_renders_the_terraform_values_into_kubeflow(tmp_path):
    """Build infra/kubeflow with kustomize, the remote upstream base replaced by stand-ins of the objects it
    patches (no network here): the gcp.env values must land in the annotations and kfp-launcher."""
    overlay = tmp_path / "kubeflow"
    shutil.copytree(KF, overlay)
    (overlay / "gcp.env").write_text((KF / "gcp.env.example").read_text())
    upstream = overlay / "upstream"
    upstream.mkdir()
    (upstream / "kustomization.yaml").write_text("namespace: kubeflow\nresources: [objects.yaml]\n")
    stand_ins = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n}}
                 for n in ("pipeline-runner", "ml-pipeline", "ml-pipeline-ui")]
    stand_ins.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kfp-launcher"},
                      "data": {"defaultPipelineRoot": "kfp-default-pipeline-root_PLACEHOLDER"}})
    (upstream / "objects.yaml").write_text(yaml.safe_dump_all(stand_ins))
    kustomization = overlay / "kustomization.yaml"
    text = re.sub(r"- github\.com/\S+", "- upstream", kustomization.read_text())
    kustomization.write_text(text)
    proc = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(proc.stdout)}
    env = dict(line.split("=", 1) for line in (KF / "gcp.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    annotation = "iam.gke.io/gcp-service-account"
    assert objects[("ConfigMap", "kfp-launcher")]["data"]["defaultPipelineRoot"] == env["defaultPipelineRoot"]
    assert {name: objects[("ServiceAccount", name)]["metadata"]["annotations"][annotation]
            for name in ("pipeline-runner", "softprompt-registrar", "ml-pipeline", "ml-pipeline-ui")} == {
        "pipeline-runner": env["pipelineServiceAccount"], "softprompt-registrar": env["registrarServiceAccount"],
        "ml-pipeline": env["kfpServiceAccount"], "ml-pipeline-ui": env["kfpServiceAccount"]}
    assert all(d["metadata"]["namespace"] == "kubeflow" for d in objects.values())
