"""The cluster the pipeline runs on, derived from params.yaml's `cluster:` section.

`pipelines/prompt_tuning.py` turns `cluster.accelerators` into node selectors, tolerations and resource
requests; this module turns the same entries into the Terraform variables of the node pools
(`infra/terraform/node_pools.auto.tfvars.json`), so the labels and taints a step asks for are the ones
its node pool carries. Regenerate after editing params.yaml:

    python -m softprompt.cluster tfvars > infra/terraform/node_pools.auto.tfvars.json

and `tests/test_infra.py` fails if the committed file differs from what params.yaml gives.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from softprompt.config import component_image, load_params
from softprompt.errors import SoftpromptError

# GKE sets labels under this prefix itself (from the accelerator type, the TPU machine type and topology)
# and rejects node pools that set them by hand, so Terraform derives them instead of listing them.
GKE_MANAGED_PREFIX = "cloud.google.com/"
GPU_LABEL = "cloud.google.com/gke-accelerator"
TPU_LABEL = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
RESOURCES = {"nvidia.com/gpu": "gpu", "google.com/tpu": "tpu"}
# TPU machine type -> the accelerator and the topology GKE labels a single-host node with.
TPU_MACHINES = {"ct5lp-hightpu-1t": ("tpu-v5-lite-podslice", "1x1"),
                "ct5lp-hightpu-4t": ("tpu-v5-lite-podslice", "2x2"),
                "ct5lp-hightpu-8t": ("tpu-v5-lite-podslice", "2x4")}
# Kubernetes spells taint effects NoSchedule; the GKE API (and Terraform) NO_SCHEDULE.
TAINT_EFFECTS = {"NoSchedule": "NO_SCHEDULE", "PreferNoSchedule": "PREFER_NO_SCHEDULE", "NoExecute": "NO_EXECUTE"}

# Shapes of the machine types params.yaml may name: vCPUs, memory (GB), accelerators per node. GKE fixes
# the accelerator count of G2/A2/A3 and TPU machines, so it follows from the machine type, not a setting.
MACHINES: dict[str, tuple[int, float, int]] = {
    "g2-standard-4": (4, 16, 1), "g2-standard-8": (8, 32, 1), "g2-standard-12": (12, 48, 1),
    "g2-standard-16": (16, 64, 1), "g2-standard-24": (24, 96, 2), "g2-standard-32": (32, 128, 1),
    "g2-standard-48": (48, 192, 4), "g2-standard-96": (96, 384, 8),
    "a2-highgpu-1g": (12, 85, 1), "a2-highgpu-2g": (24, 170, 2), "a2-highgpu-4g": (48, 340, 4),
    "a2-highgpu-8g": (96, 680, 8), "a2-ultragpu-1g": (12, 170, 1), "a2-ultragpu-2g": (24, 340, 2),
    "a2-ultragpu-4g": (48, 680, 4), "a2-ultragpu-8g": (96, 1360, 8), "a3-highgpu-8g": (208, 1872, 8),
    "ct5lp-hightpu-1t": (24, 48, 1), "ct5lp-hightpu-4t": (112, 192, 4), "ct5lp-hightpu-8t": (224, 384, 8),
}


def machine(machine_type: str) -> tuple[int, float, int]:
    if machine_type not in MACHINES:
        raise SoftpromptError(f"machine type {machine_type!r} is not in softprompt.cluster.MACHINES; add its "
                              "vCPUs, memory and accelerator count there")
    return MACHINES[machine_type]


def allocatable(machine_type: str) -> tuple[float, float]:
    """CPU (cores) and memory (GB) a pod can request on a GKE node of this type, after GKE's reservations
    (https://cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes)."""
    cpus, mem, _ = machine(machine_type)
    cpu_reserved = sum(share * max(0.0, min(cpus, hi) - lo)
                       for lo, hi, share in ((0, 1, 0.06), (1, 2, 0.01), (2, 4, 0.005), (4, math.inf, 0.0025)))
    mem_reserved = sum(share * max(0.0, min(mem, hi) - lo) for lo, hi, share in
                       ((0, 4, 0.25), (4, 8, 0.20), (8, 16, 0.10), (16, 128, 0.06), (128, math.inf, 0.02)))
    return cpus - cpu_reserved, mem - mem_reserved - 0.1  # 100 MiB eviction threshold


def quantity(value: str | int | float) -> float:
    """A Kubernetes CPU quantity (`"8"`, `"500m"`) in cores, or a memory quantity (`32G`, `16Gi`) in GB."""
    text = str(value)
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", text)
    if not match:
        raise SoftpromptError(f"{text!r} is not a Kubernetes quantity")
    number, unit = float(match.group(1)), match.group(2) or ""
    scale = {"": 1, "m": 1e-3, "k": 1e-6, "M": 1e-3, "G": 1, "T": 1e3,
             "Ki": 1024 / 1e9, "Mi": 1024**2 / 1e9, "Gi": 1024**3 / 1e9, "Ti": 1024**4 / 1e9}[unit]
    return number * scale


def _taint(spec: dict[str, Any], name: str) -> dict[str, str]:
    taint = spec["taint"]
    if taint["effect"] not in TAINT_EFFECTS:
        raise SoftpromptError(f"cluster.accelerators.{name}.taint.effect: one of {', '.join(TAINT_EFFECTS)}")
    return {"key": taint["key"], "value": str(taint["value"]), "effect": TAINT_EFFECTS[taint["effect"]]}


def _own_labels(node_selector: dict[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in node_selector.items() if not k.startswith(GKE_MANAGED_PREFIX)}


def artifact_registry(image: str) -> dict[str, str]:
    """`LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE` -> its Artifact Registry repository."""
    match = re.fullmatch(r"([a-z0-9-]+)-docker\.pkg\.dev/([a-z0-9-]+)/([a-z0-9-]+)/[a-z0-9._/-]+", image)
    if not match:
        raise SoftpromptError(f"cluster.image {image!r}: expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE")
    return {"location": match.group(1), "project": match.group(2), "repository": match.group(3)}


# The variant every component runs unless its accelerator names another (params.yaml cluster.images).
BASE_VARIANT = "cuda"


def image(variant: str = BASE_VARIANT, params: dict[str, Any] | None = None) -> str:
    """The reference of an image variant (params.yaml `cluster.images`): the component image (the CUDA variant,
    `cluster.image:cluster.image_tag` or $SOFTPROMPT_IMAGE) plus the variant's tag suffix."""
    params = params or load_params()
    variants = params["cluster"]["images"]
    if variant not in variants:
        raise SoftpromptError(f"image variant {variant!r}: params.yaml cluster.images has {', '.join(variants)}")
    return component_image(params) + str(variants[variant].get("tag_suffix", ""))


# `make image VARIANT=NAME` records the built image's digest here (build/image-digest-NAME.txt, written by the
# image build); a spec compiled in this checkout then names the image by that digest, not by its mutable tag.
DIGEST_DIR = Path(__file__).resolve().parents[2] / "build"


def digest_file(variant: str) -> Path:
    return DIGEST_DIR / f"image-digest-{variant}.txt"


def pinned_image(variant: str = BASE_VARIANT, params: dict[str, Any] | None = None) -> str:
    """The image a compiled step runs: `cluster.image@sha256:...` when `make image` recorded the variant's digest
    (KFP's cache key holds the image string, so a digest keeps cached results and the code that made them
    together), else the tag reference `image()` gives. The file holds `sha256:HEX` or a full `NAME@sha256:HEX`."""
    params = params or load_params()
    tagged = image(variant, params)
    path = digest_file(variant)
    if not path.is_file():
        return tagged
    digest = path.read_text(encoding="utf-8").strip()
    name = digest if "@" in digest else f"{params['cluster']['image']}@{digest}"
    if not re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", name):
        raise SoftpromptError(f"{path}: {digest!r} is not an image digest (sha256:<64 hex> or NAME@sha256:<64 hex>); "
                              "rebuild with `make image` or delete the file")
    return name


def build_args(variant: str = BASE_VARIANT, params: dict[str, Any] | None = None) -> list[str]:
    """`docker build` arguments of an image variant (infra/docker/Dockerfile's ARGs), from `cluster.images`."""
    params = params or load_params()
    image(variant, params)  # the variant must exist
    spec = params["cluster"]["images"][variant]
    values = {"TORCH_VARIANT": spec["torch"], "LOCK_OVERRIDES": spec.get("lock_overrides", ""),
              "PJRT_DEVICE": spec.get("pjrt_device", "")}
    return [arg for name, value in values.items() for arg in ("--build-arg", f"{name}={value}")]


def accelerator_request(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """How a step lands on accelerator `name`'s pool: resource, count, node selector, taint and image.

    A GPU step asks for `cluster.accelerator_count` GPUs. A TPU step asks for every chip of its host (GKE
    schedules a TPU pod only if it requests all of the node's chips: 4 on a 2x2 v5e slice), and runs the
    TPU image, which starts one training process per chip.
    """
    cluster = (params or load_params())["cluster"]
    if name not in cluster["accelerators"]:
        raise SoftpromptError(f"cluster.accelerator {name!r} is not one of {', '.join(cluster['accelerators'])}")
    spec = cluster["accelerators"][name]
    count = int(cluster["accelerator_count"])
    if RESOURCES.get(spec["resource"]) == "tpu":
        count = tpu_chips_per_host(name, spec)
    return pool_request(spec, count, params)


def pool_request(spec: dict[str, Any], count: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """`count` accelerators of pool `spec` (a `cluster.accelerators` entry): resource, node selector, taint, image."""
    return {"resource": spec["resource"], "count": count, "node_selector": dict(spec["node_selector"]),
            "taint": dict(spec["taint"]), "image": image(spec.get("image", BASE_VARIANT), params)}


def topology_chips(topology: str) -> int:
    """Chips in a TPU topology: `2x2` -> 4."""
    return math.prod(int(d) for d in str(topology).split("x"))


def tpu_chips_per_host(name: str, spec: dict[str, Any]) -> int:
    """Chips of a single-host TPU slice (2x2: 4). A pipeline step is one pod on one host, so a slice that
    spans hosts is refused."""
    chips = topology_chips(spec["node_selector"][TPU_TOPOLOGY_LABEL])
    per_node = machine(spec["machine_type"])[2]
    if chips > per_node:
        raise SoftpromptError(f"cluster.accelerators.{name}: a {chips}-chip slice spans hosts, and a pipeline step "
                              f"is one pod; pick a topology of at most {per_node} chips for {spec['machine_type']}")
    return chips


def node_pools(params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Terraform variables of the node pools and the image repository, from params.yaml `cluster:`."""
    cluster = (params or load_params())["cluster"]
    gpu: dict[str, Any] = {}
    tpu: dict[str, Any] = {}
    for name, spec in cluster["accelerators"].items():
        kind = RESOURCES.get(spec["resource"])
        selector = spec["node_selector"]
        _, _, per_node = machine(spec["machine_type"])
        pool = {"machine_type": spec["machine_type"], "labels": _own_labels(selector), "taint": _taint(spec, name)}
        if kind == "gpu":
            if GPU_LABEL not in selector:
                raise SoftpromptError(f"cluster.accelerators.{name}.node_selector: needs {GPU_LABEL}")
            gpu[name] = {**pool, "accelerator_type": selector[GPU_LABEL], "accelerator_count": per_node}
        elif kind == "tpu":
            if TPU_LABEL not in selector or TPU_TOPOLOGY_LABEL not in selector:
                raise SoftpromptError(f"cluster.accelerators.{name}.node_selector: needs {TPU_LABEL} and "
                                      f"{TPU_TOPOLOGY_LABEL}")
            topology = str(selector[TPU_TOPOLOGY_LABEL])
            chips = topology_chips(topology)
            accelerator, host_topology = TPU_MACHINES.get(spec["machine_type"], (None, None))
            if accelerator != selector[TPU_LABEL] or (chips <= per_node and topology != host_topology):
                raise SoftpromptError(f"cluster.accelerators.{name}: machine type {spec['machine_type']} gives "
                                      f"{accelerator} {host_topology} nodes, not {selector[TPU_LABEL]} {topology}")
            # A slice larger than one machine spans hosts, which GKE places with a COMPACT placement policy.
            tpu[name] = {**pool, "tpu_topology": topology, "multi_host": chips > per_node}
        else:
            raise SoftpromptError(f"cluster.accelerators.{name}.resource: one of {', '.join(RESOURCES)}")
    return {
        "artifact_registry": artifact_registry(cluster["image"]),
        "cpu_pool": {"labels": _own_labels(cluster["cpu_pool"]["node_selector"])},
        "gpu_pools": gpu,
        "tpu_pools": tpu,
    }


def tfvars_json(params: dict[str, Any] | None = None) -> str:
    return json.dumps(node_pools(params), indent=2, sort_keys=True) + "\n"


app = typer.Typer(help=__doc__.split("\n")[0], no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
Variant = Annotated[str | None, typer.Option(help="An image variant: a name under params.yaml cluster.images "
                                                  "(cuda, cpu, tpu); default: the components' image, cuda.")]


@app.command()
def tfvars() -> None:
    """Print infra/terraform/node_pools.auto.tfvars.json."""
    sys.stdout.write(tfvars_json())


@app.command("image")
def image_command(variant: Variant = None) -> None:
    """Print an image variant's reference (cuda: the component image, cluster.image:cluster.image_tag)."""
    typer.echo(image(variant or BASE_VARIANT))


@app.command("build-args")
def build_args_command(variant: Variant = None) -> None:
    """Print an image variant's `docker build --build-arg`s."""
    typer.echo(" ".join(build_args(variant or BASE_VARIANT)))


@app.command("code-version")
def code_version_command() -> None:
    """Print the code version the registry records for this checkout (the commit, `-dirty` if changed): what
    `make image` bakes into the image, so code_version inside a step reports the same."""
    from softprompt.registry import code_version

    typer.echo(code_version(Path.cwd()))


def main(argv: list[str] | None = None) -> int:
    from softprompt.cli import run_app

    return run_app(app, argv)


if __name__ == "__main__":
    raise SystemExit(main())
