"""The smoke pipeline end to end through kfp.local (SubprocessRunner, this interpreter), as `make pipeline-run`
runs it without a cluster: one run, two seeds (ParallelFor + Collected + the ensemble), registration into a
temporary registry repo and DVC remote. Every assertion is on that one run's artifacts, registry and table."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from browser import assert_renders
from conftest import REPO, rte_rows, write_jsonl
from kfp.local import config as kfp_local_config
from safetensors import safe_open

from pipelines import run
from pipelines.prompt_tuning import PIPELINE_NAME
from softprompt import registry
from softprompt.config import load_params

# use_venv=False on purpose: the components run in this interpreter, where softprompt is installed (as in the
# image); kfp.local warns about the custom base image each time
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")]

TABLE_KEYS = ("task", "validation", "score", "per prompt", "ensemble", "data", "cached", "registered", "promoted",
              "time", "artifacts")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def registry_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@t")
    (path / "README.md").write_text("registry\n")
    git(path, "add", "README.md")
    git(path, "commit", "-qm", "init")
    return path


def run_pipeline(root: Path, argv: list[str]) -> tuple[int, str, Path]:
    """`python -m pipelines.run run ARGV` in process, its local pipeline root under `root` (validated data under
    ROOT/validated-data); returns the exit code, stdout and the new run's directory."""
    argv = [*argv, "--param", f"data_root={root / 'validated-data'}"]
    before = set(run_dirs(root))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "LOCAL_ROOT", root / "runs")
        mp.setattr(kfp_local_config.LocalExecutionConfig, "instance", None)  # kfp.local's global state, restored
        for name in ("KFP_HOST", "SOFTPROMPT_REGISTRY_REMOTE", "PROFILE"):
            mp.delenv(name, raising=False)
        with contextlib.redirect_stdout(out):
            rc = run.main(argv)
    (run_dir,) = set(run_dirs(root)) - before
    return rc, out.getvalue(), run_dir


def run_dirs(root: Path) -> list[Path]:
    runs = root / "runs" / "rte"
    return [p for p in runs.iterdir() if p.name.startswith(PIPELINE_NAME)] if runs.is_dir() else []


def table(output: str) -> dict[str, str]:
    """The summary table `run` prints last: `key  value` lines."""
    lines = output.rstrip("\n").splitlines()[-len(TABLE_KEYS):]
    width = max(len(k) for k in TABLE_KEYS)
    rows = {line[:width].rstrip(): line[width + 2:] for line in lines}
    assert list(rows) == list(TABLE_KEYS), lines
    return rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-smoke")
    data = root / "RTE"
    write_jsonl(data / "train.jsonl", rte_rows(40))
    write_jsonl(data / "val.jsonl", rte_rows(32, start=100))
    reg = registry_repo(root / "registry")
    remote = root / "dvc-remote"
    tags_before = git(REPO, "tag", "--list")
    argv = ["run", "--task", "rte", "--profile", "smoke", "--data", str(data), "--param", "seeds=[1,2]",
            "--param", f"registry_repo={reg}", "--param", f"registry_remote={remote}"]
    rc, out, run_dir = run_pipeline(root, argv)
    assert git(REPO, "tag", "--list") == tags_before  # nothing registered into the project's own repo
    return SimpleNamespace(rc=rc, out=out, run_dir=run_dir, registry=reg, remote=remote, root=root, data=data,
                           argv=argv)


def outputs(run_dir: Path, step: str) -> dict:
    return json.loads((run_dir / step / "executor_output.json").read_text())


def artifact_meta(run_dir: Path, step: str, name: str) -> dict:
    (art,) = outputs(run_dir, step)["artifacts"][name]["artifacts"]
    return art["metadata"]


def iteration(run_dir: Path, i: int) -> Path:
    """The directory of the ParallelFor's i-th train-prompt (the loop's number follows the DAG's other groups)."""
    (found,) = run_dir.glob(f"for-loop-*-iteration-{i}")
    return found


def test_run_succeeds(smoke):
    assert smoke.rc == 0, smoke.out[-3000:]
    loop = iteration(smoke.run_dir, 0).name.removesuffix("-iteration-0")
    assert {p.name for p in smoke.run_dir.iterdir()} == {
        "preflight", "validate-data", "base-as-is", f"{loop}-iteration-0", f"{loop}-iteration-1",
        "evaluate-prompts", "register-prompt"}  # lm_adapt_steps 0: base-as-is (CPU), no lm-adapt (GPU)


def fingerprint_of(directory: Path, names: tuple[str, ...] = ("train.jsonl", "val.jsonl")) -> str:
    """The data fingerprint computed here, independently: md5 of the sorted (file, md5) list."""
    files = sorted((n, hashlib.md5((directory / n).read_bytes()).hexdigest()) for n in names)
    return hashlib.md5(json.dumps(files).encode()).hexdigest()


def test_validation_report_and_validated_dataset(smoke):
    step = smoke.run_dir / "validate-data"
    params = outputs(smoke.run_dir, "validate-data")["parameterValues"]
    fingerprint = fingerprint_of(smoke.data)
    assert params["fingerprint"] == fingerprint
    validated = Path(params["location"])  # content-addressed: DATA_ROOT/<task>/<fingerprint>
    assert validated == smoke.root / "validated-data" / "rte" / fingerprint
    assert len((validated / "train.jsonl").read_text().splitlines()) == 40
    assert len((validated / "val.jsonl").read_text().splitlines()) == 32
    report = json.loads((step / "validation" / "validation.json").read_text())
    assert report["success"] is True
    assert report["statistics"]["unsuccessful_expectations"] == 0
    assert (step / "report").read_text().lstrip().startswith("<!DOCTYPE html>")  # the Data Docs page for the UI
    meta = artifact_meta(smoke.run_dir, "validate-data", "validation")
    assert (meta["fingerprint"], meta["location"]) == (fingerprint, str(validated))
    checks = artifact_meta(smoke.run_dir, "validate-data", "checks")
    assert checks == {"evaluated_expectations": report["statistics"]["evaluated_expectations"],
                      "unsuccessful_expectations": 0, "train_rows": 40, "validation_rows": 32}


def test_lm_adaptation_skipped_passes_the_base_through(smoke):
    assert json.loads((smoke.run_dir / "base-as-is" / "model" / "model_ref.json").read_text()) == {
        "model": "tiny", "lm_adapted": False}
    assert outputs(smoke.run_dir, "base-as-is")["parameterValues"]["Output"] == "tiny"


def test_one_peft_prompt_per_seed(smoke):
    smoke_params = load_params("smoke")
    data = outputs(smoke.run_dir, "validate-data")["parameterValues"]
    seeds = []
    for i in (0, 1):
        prompt = iteration(smoke.run_dir, i) / "train-prompt" / "prompt"
        adapter = json.loads((prompt / "adapter_config.json").read_text())
        assert adapter["peft_type"] == "PROMPT_TUNING"
        assert adapter["num_virtual_tokens"] == smoke_params["prompt"]["length"] == 20
        with safe_open(str(prompt / "adapter_model.safetensors"), "pt") as f:
            (key,) = f.keys()
            assert f.get_tensor(key).shape[0] == 20
        meta = json.loads((prompt / "softprompt.json").read_text())
        assert (meta["task"], meta["base_model"], meta["prompt_length"]) == ("rte", "tiny", 20)
        assert meta["steps_trained"] == smoke_params["train"]["steps"]
        assert meta["data"]["source"] == data["location"]  # trained on the validated copy, not the raw input
        assert meta["data_content"] == {"fingerprint": data["fingerprint"], "location": data["location"]}
        seeds.append(meta["train"]["seed"])
        step_meta = artifact_meta(iteration(smoke.run_dir, i), "train-prompt", "prompt")
        assert step_meta["seed"] == meta["train"]["seed"]
    assert sorted(seeds) == [1, 2]


def test_evaluation_metrics_confusion_and_ensemble(smoke):
    evaluation = smoke.run_dir / "evaluate-prompts" / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["main_metric"] == "score" and metrics["score"] == metrics["accuracy"]  # RTE: score = accuracy
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num_examples"] == 32 and metrics["split"] == "validation"
    cm = metrics["confusion_matrix"]
    assert cm["labels"][:2] == ["entailment", "not_entailment"]
    assert sum(map(sum, cm["matrix"])) == 32
    assert sum(cm["matrix"][i][i] for i in range(len(cm["labels"]))) == round(metrics["accuracy"] * 32)
    assert len(metrics["per_prompt"]) == 2 and metrics["accuracy"] == max(metrics["per_prompt"])
    assert 0.0 <= metrics["ensemble"]["accuracy"] <= 1.0
    for name in ("prompt-0.json", "prompt-1.json", "ensemble/ensemble.json"):
        assert (evaluation / name).is_file(), name

    step = outputs(smoke.run_dir, "evaluate-prompts")
    assert step["parameterValues"]["Output"] == metrics["accuracy"]
    logged = artifact_meta(smoke.run_dir, "evaluate-prompts", "metrics")
    assert logged["accuracy"] == metrics["accuracy"]
    assert [logged["prompt_0_score"], logged["prompt_1_score"]] == metrics["per_prompt"]
    assert logged["ensemble_accuracy"] == metrics["ensemble"]["accuracy"]
    assert logged["non_label_share"] == sum(row[-1] for row in cm["matrix"]) / 32  # the <other> column
    ui_cm = artifact_meta(smoke.run_dir, "evaluate-prompts", "confusion")["confusionMatrix"]
    assert [a["displayName"] for a in ui_cm["annotationSpecs"]] == cm["labels"]
    assert [r["row"] for r in ui_cm["rows"]] == cm["matrix"]

    # the best prompt artifact is a copy of the winning seed's prompt
    best = smoke.run_dir / "evaluate-prompts" / "best_prompt"
    winner = iteration(smoke.run_dir, metrics["best_prompt"]) / "train-prompt" / "prompt"
    for name in ("adapter_model.safetensors", "adapter_config.json", "softprompt.json"):
        assert (best / name).read_bytes() == (winner / name).read_bytes(), name


def test_each_step_leaves_a_page_that_renders_offline(smoke, tmp_path):
    """The HTML artifacts the UI's viewer shows: self-contained, rendered by headless Chromium with no network."""
    pages = {"validate-data": smoke.run_dir / "validate-data" / "report",
             "train-prompt": iteration(smoke.run_dir, 0) / "train-prompt" / "curves",
             "evaluate-prompts": smoke.run_dir / "evaluate-prompts" / "report"}
    for step, page in pages.items():
        assert_renders(page, tmp_path / f"{step}.png")
    skipped = (smoke.run_dir / "base-as-is" / "curves").read_text()  # LM adaptation skipped: a line of text
    assert skipped.startswith("<!DOCTYPE html>") and "lm_adapt_steps is 0: prompts are trained on tiny" in skipped
    validation = json.loads((smoke.run_dir / "validate-data" / "validation" / "validation.json").read_text())
    text = pages["validate-data"].read_text()
    assert text.count("<tr><td>") >= validation["statistics"]["evaluated_expectations"]  # one row per expectation
    assert (smoke.run_dir / "validate-data" / "validation" / "data_docs" / "index.html").is_file()  # the full site
    report = pages["evaluate-prompts"].read_text()
    assert "prompt 1" in report and "ensemble" in report and "Outputs that were not a label" in report
    assert report.count("data:image/png;base64,") == 2  # the scores and the confusion matrix


def test_train_step_metrics_curves_and_tensorboard_logs(smoke):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loop = iteration(smoke.run_dir, 0)
    meta = json.loads((loop / "train-prompt" / "prompt" / "softprompt.json").read_text())
    logged = artifact_meta(loop, "train-prompt", "metrics")
    losses = [row["loss"] for row in meta["loss_curve"]]
    validation = meta["metrics"]["validation"]
    assert logged == {"final_loss": losses[-1], "best_loss": min(losses), "best_step": meta["best_step"],
                      "best_validation_score": validation["score"], "steps_per_second": meta["steps_per_second"],
                      "trainable_parameters": 20 * 64}
    assert [row["step"] for row in meta["validation_curve"]] == [15, 30]  # eval_every 15 of 30 steps
    assert meta["best_step"] in (15, 30) and logged["steps_per_second"] > 0
    curves = (loop / "train-prompt" / "curves").read_text()
    assert curves.count("data:image/png;base64,") == 2  # training loss, validation score

    (logdir,) = (loop / "train-prompt" / "prompt" / "runs").iterdir()  # one run: <time>_<host>
    events = EventAccumulator(str(logdir))  # what `tensorboard --logdir` reads
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "eval/score"} <= set(scalars), scalars
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-5)
    assert [e.step for e in events.Scalars("eval/score")] == [15, 30]


def test_registered_and_promoted_in_the_registry_repo(smoke):
    tags = set(git(smoke.registry, "tag", "--list").splitlines())
    assert tags == {"rte-prompt@v1.0.0", "rte-prompt#prod#1"}
    assert outputs(smoke.run_dir, "register-prompt")["parameterValues"]["Output"] == "rte-prompt@v1.0.0"
    (version,) = registry.versions(smoke.registry, "rte")
    assert registry.production(smoke.registry, "rte").number == version.number == 1
    metrics = json.loads((smoke.run_dir / "evaluate-prompts" / "evaluation" / "metrics.json").read_text())
    dvc_meta = registry.read_dvc_file((smoke.registry / "registry" / "rte" / "v1.dvc").read_text(), "v1.dvc")["meta"]
    assert dvc_meta["value"] == metrics["accuracy"] and dvc_meta["main_metric"] == "score"
    assert dvc_meta["run_id"] and "{{" not in dvc_meta["run_id"]  # the run's id, not the placeholder
    assert any(p.is_file() for p in smoke.remote.rglob("*"))  # the prompt's files were pushed to the DVC remote
    summary = (smoke.run_dir / "register-prompt" / "summary").read_text()
    assert summary.startswith("# rte: rte-prompt@v1.0.0") and "| promoted | True |" in summary
    # The structured result the step hands on (what the summary table reads): the artifact's metadata.
    result = artifact_meta(smoke.run_dir, "register-prompt", "summary")
    assert (result["version"], result["promoted"], result["new"]) == ("rte-prompt@v1.0.0", True, True)
    assert result["reason"] == "rte has no production prompt yet" and result["value"] == dvc_meta["value"]
    # the registry version as a Model artifact (ML Metadata: dataset -> prompt -> registered version)
    (model,) = outputs(smoke.run_dir, "register-prompt")["artifacts"]["registered"]["artifacts"]
    assert model["uri"] == f"{smoke.registry}#registry/rte/v1"
    assert {k: model["metadata"][k] for k in ("tag", "md5", "stage")} == {
        "tag": "rte-prompt@v1.0.0", "md5": version.md5, "stage": "prod"}


def test_summary_table(smoke):
    rows = table(smoke.out)
    metrics = json.loads((smoke.run_dir / "evaluate-prompts" / "evaluation" / "metrics.json").read_text())
    report = json.loads((smoke.run_dir / "validate-data" / "validation" / "validation.json").read_text())
    assert rows["task"] == "rte"
    assert rows["validation"] == f"passed ({report['statistics']['evaluated_expectations']} expectations)"
    assert rows["score"] == f"{metrics['accuracy']:.2f}"
    assert rows["per prompt"] == ", ".join(f"{v:.2f}" for v in metrics["per_prompt"])
    assert rows["ensemble"] == f"{metrics['ensemble']['accuracy']:.2f}"
    assert rows["registered"] == "rte-prompt@v1.0.0"
    data = outputs(smoke.run_dir, "validate-data")["parameterValues"]
    assert rows["data"] == f"{data['fingerprint']} ({data['location']})"
    assert rows["cached"] == "none"  # a fresh pipeline root: nothing to reuse
    assert rows["promoted"] == "True"
    assert rows["artifacts"] == str(smoke.run_dir)
    assert 0 < float(rows["time"].removesuffix(" s")) < 600


def test_retraining_follows_the_data_content(smoke):
    """The scheduled-retraining cases, on the smoke run's pipeline root, kfp.local cache and registry: the same
    data again registers nothing new (train and evaluate come from the cache, validation runs); one training
    row fewer trains again and registers v2, whose lineage names the new fingerprint."""
    v1_lineage = registry.versions(smoke.registry, "rte")[0].meta

    rc, out, run_dir = run_pipeline(smoke.root, smoke.argv)
    assert rc == 0, out[-3000:]
    rows = table(out)
    assert rows["cached"] == "base-as-is, evaluate-prompts, train-prompt, validation (stored report)"
    assert json.loads((run_dir / "validate-data" / "validation" / "validation.json").read_text())["reused"] is True
    assert {p.name for p in run_dir.iterdir()} == {"preflight", "validate-data", "register-prompt"}  # only these ran
    assert rows["registered"].startswith("rte-prompt@v1.0.0 (nothing new registered: ")
    assert "is already registered as rte-prompt@v1.0.0" in rows["registered"]
    assert rows["score"] == table(smoke.out)["score"]  # read from the cached evaluation
    assert [v.number for v in registry.versions(smoke.registry, "rte")] == [1]
    summary = (run_dir / "register-prompt" / "summary").read_text()
    assert "| new version | False |" in summary and "| promoted | False |" in summary

    changed = smoke.root / "RTE-changed"
    changed.mkdir()
    (changed / "val.jsonl").write_bytes((smoke.data / "val.jsonl").read_bytes())
    train_rows = (smoke.data / "train.jsonl").read_text().splitlines(keepends=True)
    (changed / "train.jsonl").write_text("".join(train_rows[1:]))  # one training row removed
    argv = [a if a != str(smoke.data) else str(changed) for a in smoke.argv]
    rc, out, run_dir = run_pipeline(smoke.root, [*argv, "--param", "promote=never"])
    assert rc == 0, out[-3000:]
    rows = table(out)
    assert rows["cached"] == "base-as-is"  # the base model did not change; the data did
    assert rows["registered"] == "rte-prompt@v2.0.0"
    v1, v2 = registry.versions(smoke.registry, "rte")
    assert v1.meta == v1_lineage and v2.number == 2
    assert v1.meta["data_fingerprint"] == fingerprint_of(smoke.data)
    assert v2.meta["data_fingerprint"] == fingerprint_of(changed) != v1.meta["data_fingerprint"]
    lineage = json.loads((smoke.registry / "registry" / "rte" / "v2" / "softprompt.json").read_text())["registry"]
    assert lineage["data"]["fingerprint"] == v2.meta["data_fingerprint"]
    assert lineage["data"]["location"] == str(smoke.root / "validated-data" / "rte" / fingerprint_of(changed))
    assert outputs(run_dir, "validate-data")["parameterValues"]["fingerprint"] == v2.meta["data_fingerprint"]


def test_below_threshold_skips_registration(tmp_path):
    """dsl.If's false branch: a score under register_threshold leaves the registry untouched."""
    data = tmp_path / "RTE"
    write_jsonl(data / "train.jsonl", rte_rows(32))
    write_jsonl(data / "val.jsonl", rte_rows(32, start=100))
    reg = registry_repo(tmp_path / "registry")
    head = git(reg, "rev-parse", "HEAD")
    rc, out, run_dir = run_pipeline(tmp_path, [
        "run", "--task", "rte", "--profile", "smoke", "--data", str(data), "--param", "steps=2",
        "--param", "register_threshold=1.5", "--param", f"registry_repo={reg}",
        "--param", f"registry_remote={tmp_path / 'remote'}"])
    assert rc == 0, out[-3000:]
    assert (run_dir / "evaluate-prompts" / "evaluation" / "metrics.json").is_file()
    assert not (run_dir / "register-prompt").exists()
    assert git(reg, "tag", "--list") == "" and git(reg, "rev-parse", "HEAD") == head
    assert "registered  (not registered: below register_threshold)" in out


def test_bad_data_fails_the_run_with_the_report_written(tmp_path, capfd):
    """Finding 6: validate-data succeeds (so its report is kept, in the UI on a cluster), nothing after it but
    validation-failed runs, and the run ends failed naming what failed."""
    data = tmp_path / "RTE"
    write_jsonl(data / "train.jsonl", rte_rows(5))  # fewer rows than validate.min_rows
    write_jsonl(data / "val.jsonl", rte_rows(5, start=100))
    reg = registry_repo(tmp_path / "registry")
    rc, out, run_dir = run_pipeline(tmp_path, [
        "run", "--task", "rte", "--profile", "smoke", "--data", str(data), "--param", f"registry_repo={reg}",
        "--param", f"registry_remote={tmp_path / 'remote'}"])
    assert rc != 0
    assert {p.name for p in run_dir.iterdir()} == {"preflight", "validate-data"}  # nothing else got outputs
    captured = capfd.readouterr()
    logs = out + captured.out + captured.err  # kfp.local streams a step's log to this process's stdout
    assert "Inner task failed: 'validation-failed'" in logs
    assert "data validation failed for rte" in logs and "min_rows" in logs, logs[-3000:]
    assert outputs(run_dir, "validate-data")["parameterValues"]["passed"] is False
    assert (run_dir / "validate-data" / "report").read_text().lstrip().startswith("<!DOCTYPE html>")
    assert git(reg, "tag", "--list") == ""


def test_preflight_names_what_to_pass_without_the_hub(tmp_path):
    """No DATA and an uncached Hub model, offline: exit 2 at once, saying DATA= and MODEL=."""
    env = {k: v for k, v in os.environ.items() if k not in ("KFP_HOST", "PROFILE", "HF_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))  # an empty Hub cache
    proc = subprocess.run([sys.executable, "-m", "pipelines.run", "run", "--task", "rte", "--profile", "paper"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "DATA=" in proc.stderr and "MODEL=" in proc.stderr
    assert "google/t5-base-lm-adapt" in proc.stderr and "Traceback" not in proc.stderr
    assert "Pipeline" not in proc.stdout  # kfp.local never started


def test_without_a_profile_this_machine_uses_local_and_says_why(tmp_path):
    """No PROFILE, no KFP_HOST, no GPU: the local profile, named in one line, then the Hub preflight's error."""
    env = {k: v for k, v in os.environ.items() if k not in ("KFP_HOST", "PROFILE", "HF_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), CUDA_VISIBLE_DEVICES="")
    data = tmp_path / "RTE"
    write_jsonl(data / "train.jsonl", rte_rows(32))
    proc = subprocess.run([sys.executable, "-m", "pipelines.run", "run", "--task", "rte", "--data", str(data)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("using profile local (no profile given, no KFP_HOST and no GPU/TPU visible")
    local_model = load_params("local")["model"]
    assert lines[-1].startswith("error: the Hugging Face Hub cannot be reached; pass MODEL=")
    assert local_model in lines[-1]
    assert "DATA=" not in lines[-1]  # the data was given
