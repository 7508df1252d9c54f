"""The pipeline's steps as a cluster runs them: each step its own pod, seeing only the artifacts it declares.

Issue 22's findings, one test (or more) each, at the level of the step functions and components (kfp.local
runs are slow here; tests/test_pipeline_compile.py checks the compiled DAG, tests/test_pipeline_local.py one run):
1. evaluation loads the base from its own input artifact; lineage names the artifact, not a pod-local path;
2. preflight refuses local paths and empty registry settings; registration never commits a DVC remote;
3. a retried train step resumes from durable checkpoints keyed by the data's content;
4. registration pushes first and moves the gs:// production pointer after (a rejected push moves nothing);
5. registration outputs the registry version as a Model artifact;
6. bad data is an output of validation (its report written), not a failure of the step;
7. the image's git SHA reaches code_version; the cache epoch stays below the bucket's retention.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import hcl2
import pytest
from conftest import REPO, rte_rows, write_jsonl
from kfp import dsl
from support.registry import git, init_repo, make_prompt, metrics

from softprompt import pipeline_steps, registry
from softprompt.config import load_params
from softprompt.errors import SoftpromptError
from softprompt.registry import gcs_pointer

pytestmark = pytest.mark.pipeline  # the pipeline's steps and components as pods run them (not in make test-fast)

BUCKET = "softprompt-pods"


@pytest.fixture
def rte_data(tmp_path: Path) -> Path:
    d = tmp_path / "RTE"
    write_jsonl(d / "train.jsonl", rte_rows(16))
    write_jsonl(d / "val.jsonl", rte_rows(8, start=100))
    return d


@pytest.fixture(scope="module")
def bucket(gcs_emulator):
    from softprompt.gcs import client

    client().create_bucket(BUCKET)
    return BUCKET


def tiny_checkpoint(path: Path) -> Path:
    """An 'LM-adapted' base as lm-adapt writes it: a transformers checkpoint directory (the tiny model's)."""
    from softprompt.models import load_base

    base = load_base("tiny")
    base.model.save_pretrained(path)
    base.tokenizer.save_pretrained(path)
    return path


SHORT = {"steps": 2, "batch_size": 4, "prompt_length": 4, "init": "random", "seed": 1}


# ---- finding 1: the base reaches evaluation as an artifact; lineage names the artifact


@pytest.mark.slow
def test_evaluation_reads_its_own_base_artifact_and_lineage_names_the_uri(rte_data, tmp_path):
    """Train in one 'pod' on an adapted base at a pod-local path; that path is gone when another 'pod' evaluates
    on its own download of the same artifact. The prompt and its registered lineage name the artifact's URI."""
    uri = "gs://pipeline-root/runs/run-1/lm-adapt/model"
    train_pod = tiny_checkpoint(tmp_path / "train-pod" / "gcs" / "model")
    prompt = tmp_path / "prompt"
    meta = pipeline_steps.train_step("rte", rte_data, train_pod, prompt, "smoke",
                                     base_name=pipeline_steps.base_reference(train_pod, uri), **SHORT)
    assert meta["base_model"] == uri and meta["base_fingerprint"].startswith("sha256:")
    evaluate_pod = tmp_path / "evaluate-pod" / "gcs" / "model"
    shutil.copytree(train_pod, evaluate_pod)
    shutil.rmtree(tmp_path / "train-pod")  # the train pod is gone

    result = pipeline_steps.evaluate_step("rte", rte_data, [str(prompt)], tmp_path / "evaluation", profile="smoke",
                                          model=pipeline_steps.resolve_model(evaluate_pod))
    assert result["main_metric"] == "score" and 0.0 <= result["score"] <= 100.0
    record = registry.lineage.lineage(tmp_path, "rte", 1, meta, ("score", result["score"], {}), "md5", "run", "code")
    assert record["base_model"] == uri and record["params"]["model"] == uri
    assert str(tmp_path) not in record["base_model"]


def test_base_reference_names_the_artifact_or_the_model_it_refers_to(tmp_path):
    adapted = tiny_checkpoint(tmp_path / "adapted")
    assert pipeline_steps.base_reference(adapted, "gs://root/lm-adapt/model") == "gs://root/lm-adapt/model"
    skipped = tmp_path / "skipped"
    assert pipeline_steps.lm_adapt_step("google/t5-base-lm-adapt", 0, "", "", skipped) == "google/t5-base-lm-adapt"
    assert pipeline_steps.base_reference(skipped, "gs://root/base-as-is/model") == "google/t5-base-lm-adapt"


# ---- finding 2: preflight, and no DVC remote committed into the registry repo


def test_preflight_refuses_local_paths_and_empty_registry_settings_in_one_error(tmp_path):
    from components.preflight import preflight

    local = {"data_root": str(tmp_path), "registry_repo": "", "registry_remote": "", "lm_adapt_steps": 100,
             "lm_cache_root": str(tmp_path / "cache"), "cache_max_age_days": 60}
    with pytest.raises(SystemExit) as e:
        preflight.python_func(**local, shared_storage=True)
    message = str(e.value)
    assert message.startswith("preflight: a cluster run needs shared storage") and "\n" not in message
    for name in ("data_root", "registry_repo", "registry_remote", "lm_cache_root"):
        assert f"{name} " in message, name
    assert "--param data_root=gs://BUCKET/validated-data" in message
    assert preflight.python_func(**local, shared_storage=False).startswith("60d-")  # kfp.local: one filesystem
    shared = {**local, "data_root": "gs://b/validated", "registry_repo": "https://git.example/r.git",
              "registry_remote": "gs://b/dvc", "lm_cache_root": "gs://b/lm-cache"}
    assert preflight.python_func(**shared, shared_storage=True).startswith("60d-")


def registry_origin(tmp_path: Path, reject: bool = False) -> Path:
    """A bare registry repo to clone from and push to; with `reject`, a pre-receive hook refuses every push."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(init_repo(tmp_path / "seed")), str(origin)], check=True)
    if reject:
        hook = origin / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'push rejected by policy' >&2\nexit 1\n")
        hook.chmod(0o755)
    return origin


def test_a_pod_never_commits_its_dvc_remote_into_the_registry_repo(tmp_path):
    """register_to_origin with a remote of the pod's own: the registry repo's committed .dvc/config names none."""
    origin = registry_origin(tmp_path)
    settings = registry.Settings(remote=str(tmp_path / "pod-local-remote"), lock_timeout=60)
    reg = registry.register_to_origin(f"file://{origin}", "rte", make_prompt(tmp_path / "p", "rte", 1),
                                      metrics(tmp_path, "rte", 60.0), settings=settings)
    assert reg.new and reg.promoted
    clone = tmp_path / "check"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    committed = (clone / ".dvc" / "config").read_text() if (clone / ".dvc" / "config").exists() else ""
    assert "pod-local-remote" not in committed and "url" not in committed, committed
    assert not (clone / ".dvc" / "config.local").exists()


# ---- finding 3: durable checkpoints, keyed by content


def test_the_run_key_follows_the_data_content_not_its_directory(tmp_path):
    from softprompt.config import PromptConfig, TrainConfig
    from softprompt.tasks import get_task
    from softprompt.training import run_identity, run_key

    first, second = tmp_path / "attempt-1", tmp_path / "attempt-2"  # a retried pod's fresh temp directory
    for d in (first, second):
        write_jsonl(d / "train.jsonl", rte_rows(16))
    other = write_jsonl(tmp_path / "changed" / "train.jsonl", rte_rows(17)).parent
    base, task, cfg, prompt = SimpleNamespace(fingerprint="f" * 64), get_task("rte"), TrainConfig(), PromptConfig()
    keys = [run_key(run_identity(task, cfg, prompt, base, d)) for d in (first, second, other)]
    assert keys[0] == keys[1] != keys[2]


@pytest.mark.slow
def test_a_retried_train_step_resumes_from_the_durable_checkpoint(bucket, rte_data, tmp_path, monkeypatch, caplog):
    """The first attempt is preempted after its first checkpoint; the retry, on a fresh disk and with the data
    in a different directory, resumes from the checkpoint under the gs:// root; a finished run leaves none."""
    from softprompt.gcs import CheckpointMirror, client

    class Preempted(Exception):
        pass

    root = f"gs://{bucket}/runs/checkpoints"
    save = CheckpointMirror.save

    def preempted_after_first_save(self, checkpoint):
        save(self, checkpoint)
        raise Preempted("node preempted")

    base = tmp_path / "base"
    pipeline_steps.lm_adapt_step("tiny", 0, "", "", base)  # base-as-is's output: the tiny model, as it is
    args = {"steps": 4, "batch_size": 4, "prompt_length": 4, "init": "random", "seed": 1, "eval_every": 2}
    monkeypatch.setattr(CheckpointMirror, "save", preempted_after_first_save)
    with pytest.raises(Preempted):
        pipeline_steps.train_step("rte", rte_data, base, tmp_path / "attempt-1", "smoke", checkpoint_root=root,
                                  **args)
    stored = [b.name for b in client().list_blobs(bucket, prefix="runs/checkpoints/")]
    assert any(n.endswith("/checkpoint-2/" + CheckpointMirror.COMPLETE) for n in stored), stored

    monkeypatch.setattr(CheckpointMirror, "save", save)
    retry_data = shutil.copytree(rte_data, tmp_path / "retry-pod" / "RTE")
    with caplog.at_level(logging.INFO, logger="softprompt.training"):
        meta = pipeline_steps.train_step("rte", retry_data, base, tmp_path / "attempt-2", "smoke",
                                         checkpoint_root=root, **args)
    assert any("resuming from" in r.getMessage() and "checkpoint-2" in r.getMessage() for r in caplog.records)
    assert meta["steps_trained"] == 4
    assert [h["step"] for h in meta["loss_curve"]] == [1, 2, 3, 4]  # steps 1-2 from the checkpoint's history
    assert list(client().list_blobs(bucket, prefix="runs/checkpoints/")) == []  # finished: nothing left


def test_an_incomplete_checkpoint_is_never_resumed(bucket, tmp_path):
    from softprompt.gcs import CheckpointMirror, client

    mirror = CheckpointMirror(f"gs://{bucket}/mirror")
    run = tmp_path / "local" / "runkey"
    for step in (2, 4):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    mirror.save(run / "checkpoint-2")
    mirror.save(run / "checkpoint-4")
    marker = f"mirror/runkey/checkpoint-4/{CheckpointMirror.COMPLETE}"
    client().bucket(bucket).blob(marker).delete()  # killed between the files and the marker
    fresh = tmp_path / "fresh" / "runkey"
    assert mirror.restore(fresh) == ["checkpoint-2"]
    assert sorted(p.name for p in fresh.iterdir()) == ["checkpoint-2"]
    mirror.discard(fresh)
    assert list(client().list_blobs(bucket, prefix="mirror/")) == []


# ---- finding 4: push first, then the pointer


@pytest.fixture
def no_dvc_upload(monkeypatch):
    """Version files tracked by DVC but not uploaded: these tests are about the git push and the gs:// pointer,
    and several gcsfs uploads to fake-gcs-server in one session can stall (tests/registry/test_gcs_pointer.py
    covers the upload itself)."""
    def add_only(repo: Path, path: Path) -> None:
        with registry.dvc.dvc_repo(repo) as dvc:
            dvc.add([str(path)])

    monkeypatch.setattr(registry.dvc, "add_and_push", add_only)


def test_a_rejected_push_leaves_the_production_pointer_where_it_was(bucket, tmp_path, no_dvc_upload):
    origin = registry_origin(tmp_path, reject=True)
    settings = registry.Settings(remote=f"gs://{bucket}/rejected", lock_timeout=60)
    with pytest.raises(SoftpromptError, match="could not push the registration"):
        registry.register_to_origin(f"file://{origin}", "rte", make_prompt(tmp_path / "p", "rte", 1),
                                    metrics(tmp_path, "rte", 60.0), attempts=2, settings=settings)
    assert gcs_pointer.read_pointer(settings.remote, "rte") == (None, 0)
    assert git(origin, "tag") == ""


def test_the_pointer_moves_after_the_push_and_moving_it_again_is_a_no_op(bucket, tmp_path, no_dvc_upload):
    origin = registry_origin(tmp_path)
    settings = registry.Settings(remote=f"gs://{bucket}/accepted", lock_timeout=60)
    reg = registry.register_to_origin(f"file://{origin}", "rte", make_prompt(tmp_path / "p", "rte", 1),
                                      metrics(tmp_path, "rte", 60.0), settings=settings)
    assert reg.promoted and "rte-prompt@v1.0.0" in git(origin, "tag").split()
    pointer, generation = gcs_pointer.read_pointer(settings.remote, "rte")
    assert (pointer["number"], pointer["md5"]) == (1, reg.md5)
    again = registry._move_pointer_after_push(reg, settings, force=False)  # a retried step after a lost reply
    assert again.promoted
    assert gcs_pointer.read_pointer(settings.remote, "rte")[1] == generation  # not rewritten


# ---- finding 5: the registry version as a Model artifact


def test_register_outputs_the_registry_version_as_a_model(tmp_path, monkeypatch):
    from components.register import register_prompt

    monkeypatch.delenv("SOFTPROMPT_REGISTRY_REMOTE", raising=False)
    repo = init_repo(tmp_path / "registry")
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    shutil.copy(metrics(tmp_path, "rte", 61.0), evaluation / "metrics.json")
    (tmp_path / "outputs").mkdir()  # the launcher makes each output's parent directory
    registered = dsl.Model(uri=str(tmp_path / "outputs" / "registered"))
    tag = register_prompt.python_func(
        task="rte", prompt=dsl.Model(uri=str(make_prompt(tmp_path / "prompt", "rte", 1))),
        evaluation=dsl.Dataset(uri=str(evaluation)), registry_repo=str(repo),
        registry_remote=str(tmp_path / "remote"), promote="auto", promotion_margin=0.5, run_id="run-1",
        summary=dsl.Markdown(uri=str(tmp_path / "outputs" / "summary")), registered=registered)
    assert tag == "rte-prompt@v1.0.0"
    assert registered.uri == f"{repo}#registry/rte/v1"
    version = registry.get_version(repo, "rte", 1)
    assert {k: registered.metadata[k] for k in ("tag", "md5", "stage")} == {
        "tag": tag, "md5": version.md5, "stage": load_params()["registry"]["stage"]}


# ---- finding 6: bad data is an output, its report written


def test_bad_data_is_reported_not_raised(tmp_path):
    from components.validate import validate_data, validation_failed

    bad = tmp_path / "RTE"
    write_jsonl(bad / "train.jsonl", rte_rows(5))  # fewer rows than validate.min_rows
    write_jsonl(bad / "val.jsonl", rte_rows(5, start=100))
    out = tmp_path / "outputs"
    validation = dsl.Artifact(uri=str(out / "validation"))
    report = dsl.HTML(uri=str(out / "report"))
    result = validate_data.python_func(task="rte", data=str(bad), data_root=str(tmp_path / "validated"), reuse=False,
                                       validation=validation, report=report, checks=dsl.Metrics(uri=str(out / "c")))
    assert (result.passed, result.fingerprint, result.location) == (False, "", "")
    assert "FAIL" in Path(report.path).read_text() and validation.metadata["passed"] is False
    assert not (tmp_path / "validated").exists()  # nothing stored for train to read
    with pytest.raises(SystemExit, match="data validation failed for rte") as e:
        validation_failed.python_func(task="rte", validation=validation)
    assert "min_rows" in str(e.value) or "rows" in str(e.value)


# ---- finding 7: the image's commit, the cache epoch


def test_code_version_in_an_image_is_the_baked_in_git_sha(monkeypatch):
    from softprompt import __version__
    from softprompt.registry import git as gitrepo

    monkeypatch.setattr(gitrepo, "code_version", lambda path, *ignore: None)  # an image has no .git
    monkeypatch.setenv("SOFTPROMPT_GIT_SHA", "0123abcd" * 5)
    assert pipeline_steps.code_version() == f"softprompt {__version__} @ {'0123abcd' * 5}"
    monkeypatch.delenv("SOFTPROMPT_GIT_SHA")
    assert pipeline_steps.code_version() == f"softprompt {__version__} (installed package)"


def test_cached_results_never_outlive_the_bucket_lifecycle():
    """A cache epoch lasts cache_max_age_days, below the age at which the pipeline root's lifecycle rule deletes
    run artifacts; params.yaml and Terraform agree on that age."""
    cluster = load_params()["cluster"]
    variables = hcl2.loads((REPO / "infra/terraform/variables.tf").read_text())["variable"]
    key = '"pipeline_root_retention_days"'  # python-hcl2 keeps the label's quotes
    (retention,) = [v[key] for v in variables if key in v]
    assert retention["default"] == cluster["pipeline_root_retention_days"]
    assert "var.pipeline_root_retention_days" in (REPO / "infra/terraform/storage.tf").read_text()
    max_age = cluster["cache_max_age_days"]
    assert 0 < max_age < cluster["pipeline_root_retention_days"]
    day = 86400
    start = 20000 // max_age * max_age * day  # the first second of an epoch
    epochs = [pipeline_steps.cache_epoch(max_age, start + d * day) for d in (0, max_age - 1, max_age)]
    assert epochs[0] == epochs[1] != epochs[2]
    with pytest.raises(SoftpromptError, match="cache_max_age_days"):
        pipeline_steps.cache_epoch(0)
