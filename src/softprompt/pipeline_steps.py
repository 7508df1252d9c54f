"""The pipeline's five steps as plain functions over local paths.

The KFP components in `components/` are thin wrappers that map their artifacts to paths and call these;
the DVC stages call the same work through the `softprompt` CLI. Each function here only resolves
inputs (gs:// data, the Hub, an LM-adapted model or the base as is) and calls the library function that
does the work, so no step's logic exists twice.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, copy_dir, file_md5, write_json

MODEL_REF = "model_ref.json"  # written instead of a checkpoint when LM adaptation is skipped


def local_data(task_name: str, data: str, workdir: str | Path) -> Path:
    """A local directory with the task's files: `data` itself, a gs:// prefix downloaded, or the Hub exported."""
    if data.startswith("gs://"):
        from softprompt.gcs import download_prefix

        return download_prefix(data, Path(workdir) / "gcs")
    if data:
        if not Path(data).is_dir():
            raise SoftpromptError(f"{data}: no such data directory; pass DATA=DIR with the task's files")
        return Path(data)
    return export_hub_dataset(task_name, Path(workdir) / "hub")


def export_hub_dataset(task_name: str, output: Path) -> Path:
    """Write each split of the task's Hub dataset as the task's local file format (jsonl), for validation."""
    from softprompt.tasks import SPLITS, get_task
    from softprompt.tasks.loading import load_hub_rows

    task = get_task(task_name)
    with atomic_dir(output) as tmp:
        for split in SPLITS:
            names = [n for n in task.files.get(split, ()) if n.endswith(".jsonl")]
            if not names:
                continue
            rows = load_hub_rows(task, split)
            with (tmp / names[0]).open("w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return output


def data_fingerprint(files: dict[str, str]) -> str:
    """One content hash for a dataset: md5 of the sorted (file name, file md5) list. Equal bytes give an equal
    fingerprint wherever the files came from (directory, gs://, a Hub export); any changed row changes it."""
    listing = json.dumps(sorted(files.items()))
    return hashlib.md5(listing.encode()).hexdigest()


def manifest_files(validated: Path) -> dict[str, str]:
    """{file name: md5} of a validated dataset, from the manifest `softprompt validate` writes beside the files."""
    from softprompt.validation import MANIFEST

    manifest = json.loads((validated / MANIFEST).read_text(encoding="utf-8"))
    return {info["file"]: info["md5"] for info in manifest["splits"].values()}


def content_location(data_root: str, task: str, fingerprint: str) -> str:
    """Where a validated dataset lives: DATA_ROOT/<task>/<fingerprint>, one immutable directory per content."""
    if not data_root:
        raise SoftpromptError("data_root is empty; set pipeline.data_root in params.yaml (a directory or gs:// "
                              "prefix every step can read)")
    root = data_root.rstrip("/") if data_root.startswith("gs://") else str(Path(data_root).expanduser())
    return f"{root}/{task}/{fingerprint}"


def publish(staged: Path, location: str) -> bool:
    """Copy a validated dataset to its content-addressed location unless it is already there (same content,
    same path: never rewritten, so a run reading it is never disturbed). Returns whether it was written."""
    from softprompt.validation import MANIFEST

    if location.startswith("gs://"):
        from softprompt.gcs import client, split_uri

        bucket_name, prefix = split_uri(location)
        bucket = client().bucket(bucket_name)
        if bucket.blob(f"{prefix}/{MANIFEST}").exists():
            return False
        # The manifest goes last: a location with a manifest is complete, so the check above is enough.
        for path in sorted(staged.iterdir(), key=lambda p: p.name == MANIFEST):
            bucket.blob(f"{prefix}/{path.name}").upload_from_filename(str(path), checksum="crc32c")
        return True
    if (Path(location) / MANIFEST).is_file():
        return False
    copy_dir(staged, location)
    return True


def validate_step(task: str, data: str, data_root: str, report: str | Path, workdir: str | Path,
                  reuse: bool = True, check: bool = True) -> dict[str, Any]:
    """Validate the task's data and store it by content: DATA_ROOT/<task>/<fingerprint>. Returns the report
    with `fingerprint` (see data_fingerprint), `location`, `files` ({name: md5}) and `reused`. Bad data raises,
    or with `check=False` returns the report (`success` false, nothing stored) for the caller to act on.

    With `reuse`, a local DATA_ROOT keeps each passed report beside the data it describes
    (<location>/reports/<suite key>/): the same bytes validated by the same suite, thresholds and code give the
    same result, so a rerun copies it instead of running Great Expectations again.
    """
    from softprompt.tasks import get_task
    from softprompt.validation import RESULT_FILE, ValidateConfig, split_files, suite_key, summary, validate

    source, definition = local_data(task, data, workdir), get_task(task)
    stored = stored_report(data_root, task, split_files(definition, source), suite_key(definition, ValidateConfig()))
    if reuse and stored is not None and (stored / RESULT_FILE).is_file():
        copy_dir(stored, report)
        result = {**json.loads((Path(report) / RESULT_FILE).read_text(encoding="utf-8")), "reused": True}
        write_json(Path(report) / RESULT_FILE, result)
        return result
    staged = Path(workdir) / "validated"
    result = validate(task, source, report, output=staged)
    if not result["success"]:
        if check:
            raise SoftpromptError(f"data validation failed for {task}:\n{summary(result)}")
        return {**result, "reused": False}
    files = manifest_files(staged)
    fingerprint = data_fingerprint(files)
    location = content_location(data_root, task, fingerprint)
    written = publish(staged, location)
    result = {**result, "fingerprint": fingerprint, "location": location, "files": files, "written": written,
              "reused": False}
    write_json(Path(report) / RESULT_FILE, result)
    if stored is not None:
        copy_dir(report, stored)
    return result


def validation_failure(task: str, report_dir: str | Path) -> str:
    """The error a run ends with when its data failed validation: the summary of the stored report."""
    from softprompt.validation import RESULT_FILE, summary

    result = json.loads((Path(report_dir) / RESULT_FILE).read_text(encoding="utf-8"))
    return f"data validation failed for {task} (the full report is validate-data's `report`):\n{summary(result)}"


def cache_epoch(max_age_days: int, now: float | None = None) -> str:
    """`<max age>d-<N>`, N = days since 1970 // max age: one value for `max_age_days` days, then the next.

    KFP's cache key holds parameter values but no age limit, so the cached steps take this as a parameter: a
    result made in one epoch is reused within that epoch only, so it is never more than `max_age_days` old
    when it is returned (kept below the pipeline root's lifecycle rule, params.yaml cluster.cache_max_age_days)."""
    import time

    if max_age_days <= 0:
        raise SoftpromptError(f"cache_max_age_days must be a positive number of days, got {max_age_days}")
    days = int((time.time() if now is None else now) // 86400)
    return f"{max_age_days}d-{days // max_age_days}"


def check_cluster_settings(values: dict[str, Any]) -> None:
    """Refuse, in one error naming each setting and its fix, what only works on one machine: every step of a
    cluster run is its own pod, so validated data, the LM-adaptation cache and the DVC remote must be gs://
    storage every pod reaches, and the registry must be a git URL (the pod's working directory is not a
    repository, and anything written there dies with the pod)."""
    from softprompt.registry import is_git_url

    problems = []
    if not str(values.get("data_root", "")).startswith("gs://"):
        problems.append(f"data_root {values.get('data_root')!r} is not gs:// (pass --param "
                        "data_root=gs://BUCKET/validated-data)")
    if not is_git_url(values.get("registry_repo") or None):
        problems.append(f"registry_repo {values.get('registry_repo')!r} is not a git URL (pass --param "
                        "registry_repo=https://HOST/ORG/REGISTRY.git)")
    if not str(values.get("registry_remote", "")).startswith("gs://"):
        problems.append(f"registry_remote {values.get('registry_remote')!r} is not gs:// (pass --param "
                        "registry_remote=gs://BUCKET/dvc)")
    cache = str(values.get("lm_cache_root") or "")
    if int(values.get("lm_adapt_steps") or 0) > 0 and cache and not cache.startswith("gs://"):
        problems.append(f"lm_cache_root {cache!r} is a local path (pass gs://BUCKET/lm-cache, or '' for no cache)")
    if problems:
        raise SoftpromptError("a cluster run needs shared storage: " + "; ".join(problems) +
                              " (defaults: params.yaml cluster.pipeline_defaults)")


def stored_report(data_root: str, task: str, files: dict[str, str], key: str) -> Path | None:
    """Where the report of this content under this suite is kept: a local DATA_ROOT only (None for gs://)."""
    location = content_location(data_root, task, data_fingerprint(files))
    return None if location.startswith("gs://") else Path(location) / "reports" / key


def check_fingerprint(local: str | Path, fingerprint: str, location: str | None = None) -> None:
    """Refuse a validated dataset (a local directory) whose files do not hash to `fingerprint`."""
    local = Path(local)
    actual = data_fingerprint({p.name: file_md5(p) for p in local.iterdir() if p.is_file()
                               and p.name in manifest_files(local)})
    if actual != fingerprint:
        raise SoftpromptError(f"{location or local}: the files hash to {actual}, not the fingerprint {fingerprint} "
                              "validation recorded; the data was modified after validation, rerun the pipeline")


def lm_adapt_step(base_model: str, steps: int, objective: str, corpus: str, output: str | Path,
                  cache_root: str = "", profile: str | None = None) -> str:
    """LM-adapt `base_model` for `steps` (reusing a cached checkpoint with the same key), or with steps=0
    record that the base is used as is. Returns the model reference training should load."""
    output = Path(output)
    if steps <= 0:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / MODEL_REF, {"model": base_model, "lm_adapted": False})
        return base_model
    from softprompt.config import load_params
    from softprompt.lm_adapt import LMAdaptConfig, lm_adapt

    if not corpus:
        raise SoftpromptError("LM adaptation needs a corpus; pass LM_CORPUS=PATH or set lm_adapt_steps to 0")
    section = {**load_params(profile).get("lm_adapt", {}), "objective": objective, "steps": steps}
    names = set(LMAdaptConfig.__dataclass_fields__)
    cfg = LMAdaptConfig(**{k: v for k, v in section.items() if k in names})
    lm_adapt(base_model, corpus, output=output, cfg=cfg, cache_root=cache_root or None, progress=False)
    return str(output)


def resolve_model(model_dir: str | Path) -> str:
    """What an lm_adapt output points at: its own checkpoint, or (LM adaptation skipped) the base model."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        return str(model_dir)
    ref = model_dir / MODEL_REF
    if ref.is_file():
        return json.loads(ref.read_text(encoding="utf-8"))["model"]
    raise SoftpromptError(f"{model_dir}: neither a checkpoint nor a {MODEL_REF}")


def base_reference(model_dir: str | Path, uri: str) -> str:
    """How lineage names the base in `model_dir` (lm-adapt's output artifact): the artifact's URI when it holds
    an adapted checkpoint (its local path exists in one pod only), else the base model it refers to."""
    if (Path(model_dir) / "config.json").is_file():
        return uri
    return resolve_model(model_dir)


def train_step(task: str, data_dir: str | Path, model_dir: str | Path, output: str | Path,
               profile: str | None = None, data_meta: dict[str, Any] | None = None, base_name: str | None = None,
               checkpoint_root: str = "", **overrides: Any) -> dict[str, Any]:
    """Train one prompt with the profile's settings, `overrides` (prompt_length, init, steps, ...) winning.
    `data_meta` (the data's fingerprint and location) goes into softprompt.json, so lineage can name it;
    `base_name` (see base_reference) replaces the base's local path there, beside its fingerprint.

    Checkpoints go under `checkpoint_root` (a directory, or a gs:// prefix mirrored from local disk), keyed by
    the run's content key (training.run_identity: data content, base, settings; never a path), so a retried
    or preempted step resumes; "" keeps them beside `output`, as `softprompt train` does."""
    from softprompt.config import load_params, training_configs
    from softprompt.training import train

    checkpoint_dir: str | None = checkpoint_root or None
    store = None
    if checkpoint_root.startswith("gs://"):
        import tempfile

        from softprompt.gcs import CheckpointMirror

        store, checkpoint_dir = CheckpointMirror(checkpoint_root), tempfile.mkdtemp(prefix="checkpoints-")

    prompt_cfg, train_cfg, eval_cfg = training_configs(load_params(profile), **overrides)
    extra: dict[str, Any] = {"data_content": data_meta} if data_meta else {}
    if base_name:
        extra["base_model"] = base_name
    return train(task, resolve_model(model_dir), data_dir, output, prompt_cfg, train_cfg, eval_cfg, progress=False,
                 extra_meta=extra or None, checkpoint_dir=checkpoint_dir, checkpoint_store=store)


def evaluate_step(task: str, data_dir: str | Path, prompt_dirs: list[str], output: str | Path,
                  mode: str | None = None, split: str | None = None, batch_size: int | None = None,
                  profile: str | None = None, model: str | None = None) -> dict[str, Any]:
    """Evaluate each prompt on `model` (None: the base each prompt recorded); with several, also their ensemble
    (one batched pass). The best prompt by the task's main metric is the candidate for registration: its
    metrics go to OUTPUT/metrics.json. Settings left None come from params.yaml's `eval:` (of `profile`)."""
    from softprompt.config import EvalConfig, from_section, load_params
    from softprompt.evaluation import run_evaluation

    if not prompt_dirs:
        raise SoftpromptError("no prompts to evaluate")
    cfg = from_section(EvalConfig, load_params(profile)["eval"], mode=mode, split=split, batch_size=batch_size)
    mode, split, batch_size = cfg.mode, cfg.split, cfg.batch_size
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = [run_evaluation(task, output / f"prompt-{i}.json", prompt=p, model=model, data=data_dir, mode=mode,
                              split=split, batch_size=batch_size, progress=False) for i, p in enumerate(prompt_dirs)]
    main = results[0]["main_metric"]
    best = max(range(len(results)), key=lambda i: results[i][main])
    summary: dict[str, Any] = {**results[best], "best_prompt": best, "prompt_dir": str(prompt_dirs[best]),
                               "per_prompt": [r[main] for r in results]}
    if len(prompt_dirs) > 1:
        from softprompt.ensemble import run_ensemble

        ens = run_ensemble(task, prompt_dirs, output / "ensemble", data=data_dir, model=model, split=split,
                           mode=mode, batch_size=batch_size, progress=False)
        summary["ensemble"] = ens["ensemble"]
        summary["average"] = ens["average"]
    write_json(output / "metrics.json", summary)
    return summary


def register_step(task: str, prompt_dir: str | Path, metrics_file: str | Path, repo: str | None = None,
                  run_id: str | None = None, policy: str | None = None, margin: float | None = None,
                  remote: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Register the prompt (and promote it per the policy); returns the registration as a dict, with `uri` (the
    version in the registry: REPO#registry/<task>/v<N>, REPO its git URL or checkout) and `stage` (the
    production stage if promoted, else "")."""
    from dataclasses import asdict

    from softprompt import registry

    settings = registry.Settings.load(remote=remote, margin=margin)
    kwargs["code"] = kwargs.get("code") or code_version()
    if registry.is_git_url(repo):  # a pod: clone the registry repo, register, push (retried on a race)
        reg = registry.register_to_origin(repo, task, prompt_dir, metrics_file, run_id=run_id, policy=policy,
                                          settings=settings, **kwargs)
    else:
        reg = registry.register(repo or None, task, prompt_dir, metrics_file, run_id=run_id, policy=policy,
                                settings=settings, **kwargs)
    where = repo if registry.is_git_url(repo) else str(registry.repo_root(repo))
    return {**asdict(reg), "uri": registry.location(where, task, reg.version),
            "stage": settings.stage if reg.promoted else ""}


GIT_SHA_ENV = "SOFTPROMPT_GIT_SHA"  # the commit an image was built from: the Dockerfile's build arg of that name


def code_version() -> str:
    """The code that trained the prompt: the package version plus the commit of its source checkout (with
    -dirty for uncommitted changes); in an image, which has no .git, the commit baked in as $SOFTPROMPT_GIT_SHA
    (`make image` passes it); else $SOFTPROMPT_IMAGE or "installed package"."""
    import os

    from softprompt import __version__
    from softprompt.registry.git import code_version as checkout_version

    commit = checkout_version(Path(__file__).resolve().parent) or os.environ.get(GIT_SHA_ENV, "").strip()
    if commit:
        return f"softprompt {__version__} @ {commit}"
    return f"softprompt {__version__} ({os.environ.get('SOFTPROMPT_IMAGE', 'installed package')})"


# ---------------------------------------------------------------- what the Kubeflow UI shows of each step


def log_metrics(artifact: Any, values: dict[str, Any]) -> None:
    """Log the numeric `values` on a KFP Metrics artifact, and write its metadata to the artifact's file too: the
    UI reads the metadata, kfp.local's cache counts an output artifact without a file as missing."""
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            artifact.log_metric(key, value)
    write_artifact_file(artifact)


def write_artifact_file(artifact: Any) -> None:
    """An artifact that lives in metadata only (ClassificationMetrics) gets its file, for kfp.local's cache."""
    write_json(artifact.path, artifact.metadata)


def lm_adapt_reports(model_dir: str | Path, page: str | Path) -> dict[str, Any]:
    """The lm-adapt step's HTML page (loss curves, validation loss before/after) and its Metrics values; with
    LM adaptation skipped, a page that says so and no values."""
    from softprompt import report

    ref = Path(model_dir) / MODEL_REF
    if ref.is_file():  # checked first: skipping needs no torch import (softprompt.lm_adapt)
        base = json.loads(ref.read_text(encoding="utf-8"))["model"]
        report.write_page(page, report.page("LM adaptation skipped", [report.paragraph(
            f"lm_adapt_steps is 0: prompts are trained on {base} as it is.")]))
        return {}
    from softprompt.lm_adapt import METRICS_FILE, lm_adapt_summary

    meta = json.loads((Path(model_dir) / METRICS_FILE).read_text(encoding="utf-8"))
    summary = lm_adapt_summary(meta)
    report.write_page(page, report.lm_adapt_page(meta, summary))
    return summary


def train_reports(prompt_dir: str | Path, page: str | Path) -> dict[str, Any]:
    """The train step's HTML page (training loss and validation score over steps) and its Metrics values."""
    from softprompt.prompt import read_meta
    from softprompt.report import training_page, write_page
    from softprompt.training import training_summary

    meta = read_meta(prompt_dir)
    summary = training_summary(meta)
    write_page(page, training_page(meta, summary))
    return summary


def evaluation_reports(evaluation_dir: str | Path, page: str | Path) -> dict[str, Any]:
    """The evaluation report (per-prompt scores beside the ensemble, confusion matrix, share of non-label
    outputs, twenty wrong predictions of the best prompt) from evaluate_step's output; returns the metrics."""
    from softprompt.evaluation import predictions_path
    from softprompt.report import evaluation_page, write_page, wrong_predictions

    evaluation_dir = Path(evaluation_dir)
    result = json.loads((evaluation_dir / "metrics.json").read_text(encoding="utf-8"))
    with predictions_path(evaluation_dir / f"prompt-{result['best_prompt']}.json").open(encoding="utf-8") as f:
        wrong = wrong_predictions(json.loads(line) for line in f)
    write_page(page, evaluation_page(result, wrong))
    return result


def validation_reports(report_dir: str | Path, page: str | Path) -> dict[str, Any] | None:
    """The validation page (every expectation, its result, sample offending rows) from validation.json, if the
    validation got as far as writing it; returns the report."""
    from softprompt.report import validation_page, write_page
    from softprompt.validation import RESULT_FILE

    result_file = Path(report_dir) / RESULT_FILE
    if not result_file.is_file():
        return None
    result = json.loads(result_file.read_text(encoding="utf-8"))
    write_page(page, validation_page(result))
    return result
