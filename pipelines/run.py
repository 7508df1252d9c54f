"""Compile, run, upload and schedule the prompt-tuning pipeline (the `make pipeline-*` targets call this).

    python -m pipelines.run run --task rte --profile smoke --data ../shared/data/superglue/RTE
    python -m pipelines.run compile --output build/prompt_tuning.yaml
    KFP_HOST=https://... python -m pipelines.run upload
    KFP_HOST=https://... python -m pipelines.run schedule --task rte --cron '0 3 * * 0'

`run` submits to Kubeflow Pipelines when KFP_HOST is set, otherwise it runs the same pipeline on this
machine with kfp.local (SubprocessRunner, a local pipeline root) and prints a summary table.
"""

import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from softprompt.cli import Model, run_app, setting
from softprompt.config import load_params
from softprompt.errors import SoftpromptError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "build" / "prompt_tuning.yaml"
LOCAL_ROOT = REPO / "runs" / "kfp"


def arguments(task: str | None, profile: str | None, data: str | None, model: str | None,
              params: list[str] | None, caching: bool = True) -> dict[str, Any]:
    """Pipeline arguments from the command line; unset ones keep the pipeline's params.yaml defaults."""
    out: dict[str, Any] = {"task": task or load_params()["pipeline"]["task"]}
    if profile:
        out["profile"] = profile
    if data is not None:
        out["data"] = data
    if model:
        out["model"] = model
    if not caching:  # --no-cache: no reuse of any kind
        out["reuse_validation"] = False
    for pair in params or []:
        key, _, value = pair.partition("=")
        is_json = (value != "" and value[0] in "[{0123456789-") or value in ("true", "false")  # KEY= is ""
        out[key] = json.loads(value) if is_json else value
    return out


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    import urllib.request

    try:
        urllib.request.urlopen("https://huggingface.co/api/models?limit=1", timeout=timeout)
        return True
    except OSError:
        return False


def preflight(values: dict[str, Any]) -> None:
    """Stop at once, saying what to pass, when the run would need the Hub and the Hub is out of reach."""
    from softprompt.models import TINY

    needs_data = not values.get("data")
    model = values.get("model", "")
    needs_model = model != TINY and not model.startswith("gs://") and not Path(model).exists() and not _cached(model)
    if (needs_data or needs_model) and not hub_reachable():
        what = []
        if needs_data:
            what.append(f"DATA=DIR with the {values['task']} files (e.g. DATA=../shared/data/superglue/RTE)")
        if needs_model:
            what.append(f"MODEL=tiny or MODEL=DIR with a local checkpoint (the Hub model {model!r} is not cached)")
        raise SoftpromptError("the Hugging Face Hub cannot be reached; pass " + " and ".join(what))


def _cached(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:
        return False


def effective(profile: str | None, values: dict[str, Any], on_cluster: bool = False) -> dict[str, Any]:
    """The pipeline's defaults for `profile` (a local or a cluster spec's) with `values` applied: what the run
    will actually use."""
    import inspect

    from pipelines.prompt_tuning import build_pipeline

    fn = build_pipeline(profile, on_cluster=on_cluster).pipeline_func
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    return {**defaults, **values}


def with_local_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Local runs: relative DATA/MODEL paths made absolute (component subprocesses run elsewhere). A cluster
    gets the values as given: a local path means nothing there."""
    out = dict(values)
    for key in ("data", "data_root"):
        if out.get(key) and "://" not in out[key]:
            out[key] = str(Path(out[key]).expanduser().resolve())
    if out.get("model") and Path(out["model"]).exists():
        out["model"] = str(Path(out["model"]).resolve())
    return out


class CacheHits(logging.Filter):
    """The steps kfp.local served from its cache. It logs each hit on the root logger ('Task NAME cache hit
    (key=PREFIX)'); a filter on that logger sees the record whatever handlers kfp.local installs."""

    PATTERN = re.compile(r"Task (\S+) cache hit \(key=([0-9a-f]+)\)")

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[tuple[str, str]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if match := self.PATTERN.search(str(record.msg)):
            self.hits.append((match[1], match[2]))
        return True


@contextlib.contextmanager
def watching_cache() -> Any:
    logger = logging.getLogger()
    hits, level = CacheHits(), logger.level
    logger.addFilter(hits)
    logger.setLevel(min(level or logging.WARNING, logging.INFO))  # kfp.local logs hits at INFO
    try:
        yield hits
    finally:
        logger.removeFilter(hits)
        logger.setLevel(level)


def keep_upstream_parameters_in_loops() -> None:
    """Work around a kfp.local (2.17) bug: when it expands a dsl.ParallelFor it replaces *every* input the loop
    takes from an upstream task's output parameter with the loop item, so train-prompt would get the seed as
    its data location and fingerprint. A cluster passes them through; this makes kfp.local do the same by
    restoring those inputs (all but the iterated list itself) after kfp.local builds each iteration."""
    from kfp.local.orchestrator import task_spec_utils

    original = task_spec_utils.create_parameter_loop_iteration_task_spec
    if getattr(original, "keeps_upstream_parameters", False):
        return

    def iteration_spec(loop_spec: Any, loop_item: Any, loop_task_name: str) -> Any:
        spec = original(loop_spec, loop_item, loop_task_name)
        iterated = loop_spec.parameter_iterator.items.input_parameter
        for name, given in loop_spec.inputs.parameters.items():
            if given.HasField("task_output_parameter") and name != iterated:
                spec.inputs.parameters[name].CopyFrom(given)
        return spec

    iteration_spec.keeps_upstream_parameters = True  # type: ignore[attr-defined]
    task_spec_utils.create_parameter_loop_iteration_task_spec = iteration_spec


def resolve_one_of_artifacts() -> None:
    """Work around a kfp.local (2.17) gap: it resolves dsl.OneOf for parameters but refuses it for artifacts
    ('Expected 1 artifact in ArtifactSelectorSpec'), and the base model is a OneOf of lm-adapt's and
    base-as-is's output (only one branch runs). A cluster takes the selector of the branch that ran; this
    makes kfp.local do the same: the first selector whose producer has the output."""
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    original = OrchestratorUtils.get_dag_output_artifacts
    if getattr(original, "resolves_one_of", False):
        return

    def dag_output_artifacts(dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            for selector in spec.artifact_selectors:
                with contextlib.suppress(ValueError):  # that branch did not run
                    outputs[key] = io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key)
                    break
            else:
                raise ValueError(f"dsl.OneOf output {key!r}: no branch produced it")
        return outputs

    dag_output_artifacts.resolves_one_of = True  # type: ignore[attr-defined]
    OrchestratorUtils.get_dag_output_artifacts = staticmethod(dag_output_artifacts)


def run_local(values: dict[str, Any], profile: str | None, caching: bool = True, runner: Any = None) -> dict[str, Any]:
    """Run the pipeline with kfp.local: each step a subprocess of this interpreter, or with `runner` (a
    kfp.local.DockerRunner, pipelines/containers.py) each in its own container; returns the summary."""
    from kfp import local

    from pipelines.prompt_tuning import PIPELINE_NAME, build_pipeline

    values = with_local_paths(values)
    preflight(effective(profile, values))
    root = LOCAL_ROOT / values["task"]
    root.mkdir(parents=True, exist_ok=True)
    # use_venv=False: components run with this interpreter, where softprompt is installed (as in the image).
    # enable_caching: kfp.local's cache (ROOT/.kfp_cache) keys a step by its parameter values and its input
    # artifacts' names and URIs, as a cluster's does; the steps' own caching options apply.
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True,
               enable_caching=caching)
    keep_upstream_parameters_in_loops()
    resolve_one_of_artifacts()
    before = set(root.iterdir())
    started = time.time()
    try:
        with watching_cache() as cache:
            build_pipeline(profile, on_cluster=False)(**values)
    except RuntimeError as e:  # kfp.local: a step failed; its own log (above) says why
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(e).splitlines()[0])  # kfp.local colours its messages
        raise SoftpromptError(f"the local pipeline run failed: {reason} (the step's log is above; "
                              f"artifacts under {root})") from e
    runs = [p for p in set(root.iterdir()) - before if p.name.startswith(PIPELINE_NAME)]
    run_dir = max(runs, key=lambda p: p.stat().st_mtime)
    cached = {name: cache_entry(root / ".kfp_cache", key) for name, key in cache.hits}
    return summarize_local(run_dir, values["task"], time.time() - started, cached)


def cache_entry(cache_root: Path, key_prefix: str) -> dict[str, Any]:
    """The outputs kfp.local stored for a cache key (it logs only the key's first characters)."""
    found = sorted(cache_root.glob(f"{key_prefix}*.json"))
    return json.loads(found[0].read_text()) if len(found) == 1 else {}


def _executor_output(run_dir: Path, step: str) -> dict[str, Any]:
    """What one local step reported (its executor_output.json: parameter values, artifacts with metadata)."""
    path = run_dir / step / "executor_output.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _outputs(run_dir: Path, step: str) -> dict[str, Any]:
    """Parameter outputs of one local step."""
    return dict(_executor_output(run_dir, step).get("parameterValues", {}))


def artifact_metadata(run_dir: Path, step: str, name: str) -> dict[str, Any]:
    """The metadata a local step set on its output artifact `name` (the structured result it hands on)."""
    found = _executor_output(run_dir, step).get("artifacts", {}).get(name, {}).get("artifacts", [])
    return dict(found[0].get("metadata", {})) if found else {}


def artifact_dir(run_dir: Path, step: str, name: str, cached: dict[str, Any]) -> Path:
    """Where a step's output artifact is: in this run, or (a cache hit) in the run that produced it."""
    entry = cached.get(step, {}).get(name)
    return Path(entry["uri"]) if isinstance(entry, dict) and entry.get("uri") else run_dir / step / name


def summarize_local(run_dir: Path, task: str, seconds: float,
                    cached: dict[str, Any] | None = None) -> dict[str, Any]:
    cached = cached or {}
    report = next(run_dir.glob("validate-data/validation/validation.json"), None)
    validation = json.loads(report.read_text()) if report else {}
    data = _outputs(run_dir, "validate-data")
    metrics_file = artifact_dir(run_dir, "evaluate-prompts", "evaluation", cached) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    registered = _outputs(run_dir, "register-prompt").get("Output")
    result = artifact_metadata(run_dir, "register-prompt", "summary")
    promoted = result.get("promoted")
    why = result.get("reason", "") if result.get("new") is False else ""
    return {
        "run_dir": str(run_dir), "task": task, "seconds": round(seconds, 1),
        "validation": "passed" if validation.get("success") else "failed",
        "expectations": validation.get("statistics", {}).get("evaluated_expectations"),
        "data_fingerprint": data.get("fingerprint"), "data_location": data.get("location"),
        "cached": sorted(cached) + (["validation (stored report)"] if validation.get("reused") else []),
        "main_metric": metrics.get("main_metric"), "score": metrics.get(metrics.get("main_metric", ""), None),
        "per_prompt": metrics.get("per_prompt"), "ensemble": metrics.get("ensemble"),
        "registered": (f"{registered} ({why})" if why else registered)
        or "(not registered: below register_threshold)",
        "promoted": promoted,
    }


def print_table(summary: dict[str, Any]) -> None:
    rows = [("task", summary["task"]), ("validation", f"{summary['validation']} "
                                                     f"({summary['expectations']} expectations)"),
            (summary["main_metric"] or "metric", _fmt(summary["score"])),
            ("per prompt", ", ".join(_fmt(v) for v in summary["per_prompt"] or [])),
            ("data", f"{summary['data_fingerprint']} ({summary['data_location']})"),
            ("cached", ", ".join(summary["cached"]) or "none"),
            ("registered", summary["registered"]), ("promoted", summary["promoted"]),
            ("time", f"{summary['seconds']} s"), ("artifacts", summary["run_dir"])]
    if summary.get("ensemble"):
        rows.insert(4, ("ensemble", _fmt(summary["ensemble"].get(summary["main_metric"]))))
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def compile_spec(profile: str | None, output: Path) -> Path:
    from kfp import compiler

    from pipelines.prompt_tuning import build_pipeline

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(profile), str(output))
    return output


def client():
    import kfp

    host = os.environ.get("KFP_HOST")
    if not host:
        raise SoftpromptError("KFP_HOST is not set; export KFP_HOST=https://YOUR-KFP-ENDPOINT")
    return kfp.Client(host=host, namespace=os.environ.get("KFP_NAMESPACE") or None)


def experiment_name(task: str) -> str:
    return f"{load_params()['pipeline']['experiment_prefix']}-{task}"


def check_cluster_values(values: dict[str, Any], profile: str | None) -> None:
    """A cluster run's values (with the spec's defaults) pass the preflight step's checks, checked here too so
    a bad value stops before anything reaches the server."""
    from softprompt.pipeline_steps import check_cluster_settings

    check_cluster_settings(effective(profile, values, on_cluster=True))


def submit(values: dict[str, Any], profile: str | None, spec: Path, caching: bool = True) -> str:
    check_cluster_values(values, profile)
    kfp_client = client()
    compile_spec(profile, spec)
    run = kfp_client.create_run_from_pipeline_package(
        str(spec), arguments=values, experiment_name=experiment_name(values["task"]),
        run_name=f"{values['task']}-{time.strftime('%Y%m%d-%H%M%S')}",
        # None keeps each step's own caching option (validation and registration off); True would turn caching
        # on for every root step, validation included. False (CACHE=0) turns it off for all of them.
        enable_caching=None if caching else False)
    url = f"{os.environ['KFP_HOST'].rstrip('/')}/#/runs/details/{run.run_id}"
    print(f"submitted run {run.run_id}\n{url}")
    return run.run_id


def pipeline_name(task: str | None = None) -> str:
    from pipelines.prompt_tuning import PIPELINE_NAME

    return PIPELINE_NAME


def upload(profile: str | None, spec: Path, version: str | None) -> tuple[str, str]:
    """Upload the spec as a new version of the named pipeline (creating the pipeline the first time)."""
    kfp_client = client()
    compile_spec(profile, spec)
    name = pipeline_name()
    version = version or time.strftime("v%Y%m%d-%H%M%S")
    pipeline_id = kfp_client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = kfp_client.upload_pipeline(str(spec), pipeline_name=name,
                                              description="softprompt prompt tuning")
        pipeline_id = pipeline.pipeline_id
        versions = kfp_client.list_pipeline_versions(pipeline_id).pipeline_versions or []
        version_id = versions[0].pipeline_version_id if versions else ""
        version = versions[0].display_name if versions else version  # the first version is named by the server
    else:
        v = kfp_client.upload_pipeline_version(str(spec), pipeline_version_name=version, pipeline_id=pipeline_id)
        version_id = v.pipeline_version_id
    print(f"pipeline {name} ({pipeline_id}) version {version} ({version_id})")
    return pipeline_id, version_id


def schedule(values: dict[str, Any], cron: str, profile: str | None, spec: Path, version: str | None = None) -> str:
    """A recurring run pinned to one pipeline version: `version` (an uploaded version's name), or else the spec
    compiled now, uploaded as a new version. A later upload does not change what the schedule runs."""
    cron6 = _cron6(cron)  # a bad expression stops here, before anything is uploaded
    check_cluster_values(values, profile)
    kfp_client = client()
    if version:
        pipeline_id, version_id = find_version(kfp_client, version)
    else:
        pipeline_id, version_id = upload(profile, spec, None)
    experiment = kfp_client.create_experiment(experiment_name(values["task"]))
    job = kfp_client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=f"retrain-{values['task']}", cron_expression=cron6,
        pipeline_id=pipeline_id, version_id=version_id, params=values, max_concurrency=1, no_catchup=True,
        enabled=True)
    print(f"scheduled {job.recurring_run_id}: {values['task']} at '{cron}' on {pipeline_name()} version "
          f"{version_id}")
    return job.recurring_run_id


def find_version(kfp_client: Any, version: str) -> tuple[str, str]:
    """(pipeline id, version id) of the uploaded version named `version`; a clear error if there is none."""
    pipeline_id = kfp_client.get_pipeline_id(pipeline_name())
    if pipeline_id is None:
        raise SoftpromptError(f"--version {version}: pipeline {pipeline_name()} is not uploaded; run "
                              "`make pipeline-upload` first, or leave --version out to upload this spec")
    versions = kfp_client.list_pipeline_versions(pipeline_id, page_size=1000).pipeline_versions or []
    for v in versions:
        if v.display_name == version:
            return pipeline_id, v.pipeline_version_id
    known = ", ".join(v.display_name for v in versions) or "none"
    raise SoftpromptError(f"--version {version}: {pipeline_name()} has no such version (uploaded: {known})")


def _cron6(cron: str) -> str:
    """KFP's cron has a seconds field: a 5-field expression gets '0 ' in front."""
    fields = cron.split()
    if len(fields) not in (5, 6):
        raise SoftpromptError(f"CRON={cron!r}: expected 5 fields (min hour day month weekday), e.g. '0 3 * * 0'")
    return cron if len(fields) == 6 else "0 " + cron


app = typer.Typer(help=__doc__.split("\n")[0], no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
Profile = Annotated[str | None, typer.Option(envvar="PROFILE", show_envvar=False,
                                             help="params.yaml profile (smoke, local, paper) for the defaults.")]
Spec = Annotated[Path, typer.Option(help="Where the compiled spec is written.")]
Task = Annotated[str | None, setting("pipeline.task", doc="Task to tune for.")]
Data = Annotated[str | None, setting("pipeline.data", doc="Task data: a directory or gs:// prefix ('' = the Hub).")]
Param = Annotated[list[str] | None, typer.Option("--param", help="Any other pipeline parameter, KEY=VALUE "
                                                                 "(repeatable).")]


@app.command("run")
def run_command(task: Task = None, data: Data = None, model: Model = None, param: Param = None,
                caching: Annotated[bool, typer.Option("--cache/--no-cache", help=(
                    "--no-cache runs every step, even those whose inputs match a cached execution (CACHE=0)."))]
                = True, profile: Profile = None, spec: Spec = DEFAULT_SPEC) -> None:
    """Run the pipeline: on KFP_HOST if set, else on this machine with kfp.local (and print a summary)."""
    from softprompt.profile_choice import choose_profile

    profile, why = choose_profile(profile, on_cluster=bool(os.environ.get("KFP_HOST")))
    print(f"using {why}", file=sys.stderr)
    values = arguments(task, profile, data, model, param, caching)
    if os.environ.get("KFP_HOST"):
        submit(values, profile, spec, caching)
    else:
        print_table(run_local(values, profile, caching))


@app.command("compile")
def compile_command(profile: Profile = None, spec: Spec = DEFAULT_SPEC) -> None:
    """Write the pipeline spec for upload in the Kubeflow UI."""
    print(f"wrote {compile_spec(profile, spec)}")


@app.command("upload")
def upload_command(profile: Profile = None, spec: Spec = DEFAULT_SPEC,
                   version: Annotated[str | None, typer.Option(help="Version name (default: a timestamp).")] = None,
                   ) -> None:
    """Upload the spec as a new version of the named pipeline on KFP_HOST."""
    upload(profile, spec, version)


@app.command("schedule")
def schedule_command(cron: Annotated[str, typer.Option(help="Cron expression, e.g. '0 3 * * 0' (Sundays 03:00).")],
                     task: Task = None, data: Data = None, model: Model = None, param: Param = None,
                     profile: Profile = None, spec: Spec = DEFAULT_SPEC,
                     version: Annotated[str | None, typer.Option(help=(
                         "Uploaded pipeline version to pin (default: upload this spec as a new version and pin "
                         "that)."))] = None) -> None:
    """Retrain TASK on a schedule on KFP_HOST, pinned to one pipeline version."""
    schedule(arguments(task, profile, data, model, param), cron, profile, spec, version)


def main(argv: list[str] | None = None) -> int:
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
