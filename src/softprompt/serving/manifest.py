"""The KServe InferenceService that runs `softprompt serve`, generated from params.yaml.

Placement (accelerator resource, node selector, toleration), the image and the resources come from the same
`cluster:` entries the pipeline's steps use, the port and the probes from `serve:`. Regenerate after editing
params.yaml (tests/test_infra.py fails if the committed file differs):

    python -m softprompt.serving.manifest > infra/serving/inferenceservice.yaml
"""

from __future__ import annotations

import math
import sys
from typing import Any

import yaml

from softprompt.cluster import accelerator_request
from softprompt.config import component_image, load_params

NAME = "softprompt"
SECRET_DIR = "/var/secrets/registry-git"
REGISTRY_PLACEHOLDER = "${REGISTRY_REPO}"  # envsubst fills it in, as for the secret templates
STARTUP_PERIOD_S = 10
GRACE_MARGIN_S = 5  # for the batcher to answer what is queued once uvicorn has stopped


def placement(params: dict[str, Any]) -> dict[str, Any]:
    """Node selector, tolerations and accelerator limits of `cluster.accelerator` (the CPU pool for none): the
    pipeline steps' placement (softprompt.cluster.accelerator_request)."""
    cluster = params["cluster"]
    name = cluster.get("accelerator") or "none"
    if name == "none":
        return {"nodeSelector": dict(cluster["cpu_pool"]["node_selector"]), "tolerations": [], "limits": {}}
    pool = accelerator_request(name, params)
    taint = pool["taint"]
    return {"nodeSelector": pool["node_selector"],
            "tolerations": [{"key": taint["key"], "operator": "Equal", "value": taint["value"],
                             "effect": taint["effect"]}],
            "limits": {pool["resource"]: str(pool["count"])}}


def inference_service(params: dict[str, Any] | None = None) -> dict[str, Any]:
    params = params or load_params()
    cluster, serve = params["cluster"], params["serve"]
    where = placement(params)
    heavy = cluster["resources"]["heavy"]
    git = cluster["secrets"]["registry_git"]
    port = int(serve["port"])
    container = {
        "name": "kserve-container",
        "image": component_image(params),
        "command": ["softprompt", "serve"],
        # params.yaml's host is loopback (safe on a laptop); in the pod the kubelet and the Service must reach it
        "args": ["--model", params["model"], "--registry", "$(REGISTRY_REPO)", "--host", "0.0.0.0",
                 "--port", str(port)],
        "env": [{"name": "REGISTRY_REPO", "value": params["pipeline"]["registry_repo"] or REGISTRY_PLACEHOLDER},
                # the git token is read from the read-only secret volume (never an env value in the spec)
                {"name": "GIT_TOKEN_FILE", "value": f"{SECRET_DIR}/{git['key']}"}],
        "ports": [{"containerPort": port, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": str(heavy["cpu"]), "memory": str(heavy["memory"])},
                      **({"limits": where["limits"]} if where["limits"] else {})},
        # The port binds at once and readiness answers 503 until the base and prompts are loaded; liveness and
        # readiness only start once the startupProbe passed, which allows serve.startup_timeout_s for loading.
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": port}, "periodSeconds": STARTUP_PERIOD_S,
                         "failureThreshold": math.ceil(float(serve["startup_timeout_s"]) / STARTUP_PERIOD_S)},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": port}, "periodSeconds": 5,
                           "failureThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": port}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "volumeMounts": [{"name": "registry-git", "mountPath": SECRET_DIR, "readOnly": True}],
    }
    # SIGTERM drains: drain_delay_s still serving with readiness false, then drain_grace_s for what is in flight.
    grace = math.ceil(float(serve["drain_delay_s"]) + float(serve["drain_grace_s"])) + GRACE_MARGIN_S
    predictor = {"minReplicas": 1, "nodeSelector": where["nodeSelector"], "containers": [container],
                 "terminationGracePeriodSeconds": grace,
                 "volumes": [{"name": "registry-git", "secret": {"secretName": git["name"], "defaultMode": 0o400}}]}
    if where["tolerations"]:
        predictor["tolerations"] = where["tolerations"]
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": NAME, "namespace": "kubeflow",
                         # A plain Deployment + Service (no Knative): the probes and ports above are used as given.
                         "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
            "spec": {"predictor": predictor}}


def manifest_yaml(params: dict[str, Any] | None = None) -> str:
    header = ("# Generated from params.yaml by `python -m softprompt.serving.manifest`; do not edit by hand.\n"
              "# Apply: REGISTRY_REPO=URL envsubst < infra/serving/inferenceservice.yaml | kubectl apply -f -\n")
    return header + yaml.safe_dump(inference_service(params), sort_keys=False)


if __name__ == "__main__":
    sys.stdout.write(manifest_yaml())
