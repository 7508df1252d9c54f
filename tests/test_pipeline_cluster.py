"""The cluster path (`pipelines.run` submit / upload / schedule) with the real kfp.Client against a fake KFP API.

tests/support/fake_kfp.py implements the v2beta1 endpoints the client calls and records each request, so these
tests assert what would reach a Kubeflow Pipelines server: the compiled spec, the run's arguments, the
experiment, the recurring run's trigger and pipeline reference.
"""

from __future__ import annotations

from pathlib import Path

import kfp
import pytest
import yaml
from support.fake_kfp import API, FakeKFP

from pipelines import run
from pipelines.prompt_tuning import PIPELINE_NAME
from softprompt.config import load_params

pytestmark = pytest.mark.server  # a fake KFP API server on loopback (not in make test-fast)


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    # hermetic client: no ~/.config/kfp/context.json, no namespace from the environment
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    for name in ("KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                 "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with FakeKFP() as server:
        monkeypatch.setenv("KFP_HOST", server.url)
        yield server


def spec_docs(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def test_submit_sends_the_compiled_spec_arguments_and_experiment(kfp_server, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    argv = ["run", "--task", "rte", "--profile", "paper", "--spec", str(spec), "--data", "gs://bucket/superglue/RTE",
            "--param", "seeds=[1,2]", "--param", "register_threshold=0.6", "--param", "registry_remote=gs://b/dvc",
            "--param", "data_root=gs://bucket/validated-data"]
    assert run.main(argv) == 0
    assert run.main(argv) == 0  # a second submission reuses the experiment

    pipeline_doc, platform_doc = spec_docs(spec)
    assert pipeline_doc["pipelineInfo"]["name"] == PIPELINE_NAME

    created = kfp_server.requests_to("POST", f"{API}/experiments")
    assert [r.body["display_name"] for r in created] == ["softprompt-rte"]
    assert f"softprompt-{load_params()['pipeline']['task']}" == "softprompt-rte"  # the prefix comes from params.yaml
    experiment_id = next(iter(kfp_server.experiments))

    runs = kfp_server.requests_to("POST", f"{API}/runs")
    assert len(runs) == 2
    body = runs[0].body
    assert body["experiment_id"] == experiment_id
    assert body["display_name"].startswith("rte-")
    assert body["runtime_config"]["parameters"] == {
        "task": "rte", "profile": "paper", "data": "gs://bucket/superglue/RTE", "seeds": [1, 2],
        "register_threshold": 0.6, "registry_remote": "gs://b/dvc", "data_root": "gs://bucket/validated-data"}
    assert "pipeline_version_reference" not in body  # the spec itself is sent, not a reference

    sent, sent_platform = body["pipeline_spec"]["pipeline_spec"], body["pipeline_spec"]["platform_spec"]
    assert sent["pipelineInfo"]["name"] == PIPELINE_NAME
    assert sent["root"]["inputDefinitions"] == pipeline_doc["root"]["inputDefinitions"]
    assert sent["deploymentSpec"] == pipeline_doc["deploymentSpec"]
    assert sent_platform == platform_doc  # node selectors, tolerations, secrets travel with the run
    assert "exec-train-prompt" in sent_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # each step keeps its own caching option: validation (its input is a location) and registration never cached
    root_tasks = sent["root"]["dag"]["tasks"]
    assert root_tasks["validate-data"]["cachingOptions"] == {}  # enableCache false (proto default)
    tasks = {n: t for c in sent["components"].values() if "dag" in c for n, t in c["dag"]["tasks"].items()}
    assert tasks["lm-adapt"]["cachingOptions"] == tasks["evaluate-prompts"]["cachingOptions"] == {
        "enableCache": True}
    assert tasks["register-prompt"]["cachingOptions"] == {}  # enableCache false (proto default)

    # --no-cache (make pipeline-run CACHE=0): one run with caching off for every step
    assert run.main(argv + ["--no-cache"]) == 0
    forced = kfp_server.requests_to("POST", f"{API}/runs")[2].body["pipeline_spec"]["pipeline_spec"]
    assert all(not t["cachingOptions"].get("enableCache") for t in forced["root"]["dag"]["tasks"].values())

    run_ids = list(kfp_server.runs)[:2]
    out = capsys.readouterr().out
    for run_id in run_ids:
        assert f"submitted run {run_id}\n{kfp_server.url}/#/runs/details/{run_id}" in out


def test_upload_creates_the_pipeline_then_adds_versions(kfp_server, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    assert run.main(["upload", "--profile", "paper", "--spec", str(spec)]) == 0
    (first,) = kfp_server.requests_to("POST", f"{API}/pipelines/upload")
    assert first.query["name"] == PIPELINE_NAME
    assert first.files["uploadfile"] == spec.read_bytes()
    assert spec_docs(spec)[0]["root"]["inputDefinitions"]["parameters"]["profile"]["defaultValue"] == "paper"
    (pipeline_id,) = kfp_server.pipelines
    first_version = kfp_server.versions[pipeline_id][0]
    assert capsys.readouterr().out.strip().endswith(
        f"pipeline {PIPELINE_NAME} ({pipeline_id}) version {first_version['display_name']} "
        f"({first_version['pipeline_version_id']})")

    assert run.main(["upload", "--profile", "smoke", "--spec", str(spec), "--version", "v2"]) == 0
    assert len(kfp_server.requests_to("POST", f"{API}/pipelines/upload")) == 1  # not a second pipeline
    (second,) = kfp_server.requests_to("POST", f"{API}/pipelines/upload_version")
    assert second.query == {"name": "v2", "pipelineid": pipeline_id}
    assert yaml.safe_load_all(second.files["uploadfile"].decode()).__next__()["root"]["inputDefinitions"][
        "parameters"]["model"]["defaultValue"] == "tiny"  # the smoke profile's spec
    assert [v["display_name"] for v in kfp_server.versions[pipeline_id]] == [first_version["display_name"], "v2"]
    new_id = kfp_server.versions[pipeline_id][1]["pipeline_version_id"]
    assert f"version v2 ({new_id})" in capsys.readouterr().out


def test_cluster_runs_refuse_local_paths_and_empty_registry_settings(kfp_server, tmp_path, capsys):
    """What the preflight step refuses is refused before anything reaches the server: one line naming each
    setting and what to pass."""
    for command in (["run"], ["schedule", "--cron", "0 3 * * 0"]):
        argv = [*command, "--task", "rte", "--profile", "paper", "--spec", str(tmp_path / "spec.yaml"),
                "--param", f"data_root={tmp_path}", "--param", "registry_repo=", "--param", "registry_remote="]
        assert run.main(argv) == 2
        err = capsys.readouterr().err
        assert "--param data_root=gs://" in err and "registry_repo" in err and "registry_remote" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not kfp_server.requests_to("POST", f"{API}/runs")
    assert not kfp_server.requests_to("POST", f"{API}/recurringruns")
    assert not kfp_server.requests_to("POST", f"{API}/pipelines/upload")


def test_schedule_pins_the_pipeline_version(kfp_server, tmp_path, capsys):
    """Finding 7: a schedule runs the version it was given, not whatever was uploaded last."""
    spec = tmp_path / "spec.yaml"
    argv = ["schedule", "--task", "cb", "--profile", "paper", "--spec", str(spec),
            "--param", "data_root=gs://bucket/validated-data", "--cron", "0 3 * * 0", "--param", "seeds=[42,43,44]"]
    assert run.main(argv) == 0
    (pipeline_id,) = kfp_server.pipelines  # uploaded first, since it did not exist
    (first_version,) = kfp_server.versions[pipeline_id]
    (job,) = kfp_server.requests_to("POST", f"{API}/recurringruns")
    body = job.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}  # KFP's cron has a seconds field
    assert body["pipeline_version_reference"] == {"pipeline_id": pipeline_id,
                                                  "pipeline_version_id": first_version["pipeline_version_id"]}
    assert "pipeline_spec" not in body
    assert body["runtime_config"]["parameters"] == {"task": "cb", "profile": "paper", "seeds": [42, 43, 44],
                                                    "data_root": "gs://bucket/validated-data"}
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["display_name"] == "retrain-cb"
    assert kfp_server.experiments[body["experiment_id"]]["display_name"] == "softprompt-cb"
    (job_id,) = kfp_server.recurring_runs
    assert f"scheduled {job_id}: cb at '0 3 * * 0'" in capsys.readouterr().out

    # a new version uploaded later; a schedule given --version NAME pins that one, not the latest
    assert run.main(["upload", "--profile", "smoke", "--spec", str(spec), "--version", "v2"]) == 0
    assert run.main(argv[:-4] + ["--cron", "0 0 4 * * 1", "--version", first_version["display_name"]]) == 0
    assert not [r for r in kfp_server.requests_to("POST", f"{API}/pipelines/upload_version")
                if r.query["name"] != "v2"]  # --version uploads nothing
    second = kfp_server.requests_to("POST", f"{API}/recurringruns")[1].body
    assert second["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 1"  # 6 fields pass as they are
    assert second["pipeline_version_reference"] == {"pipeline_id": pipeline_id,
                                                    "pipeline_version_id": first_version["pipeline_version_id"]}
    assert run.main(argv[:-4] + ["--cron", "0 3 * * 0", "--version", "nope"]) == 2
    assert "--version nope" in capsys.readouterr().err


def test_bad_cron_stops_before_contacting_the_server(kfp_server, tmp_path, capsys):
    assert run.main(["schedule", "--task", "rte", "--spec", str(tmp_path / "s.yaml"), "--cron", "0 3 * *"]) == 2
    assert "expected 5 fields" in capsys.readouterr().err
    assert kfp_server.requests == []


def test_cluster_commands_need_kfp_host(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KFP_HOST", raising=False)
    assert run.main(["upload", "--spec", str(tmp_path / "s.yaml")]) == 2
    assert "KFP_HOST is not set" in capsys.readouterr().err
