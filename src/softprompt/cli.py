"""The `softprompt` command line. Every command is a thin layer over a library function.

Options left unset take their defaults from params.yaml (optionally a `--profile` of it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from softprompt.errors import SoftpromptError

try:  # --help shows params.yaml's values, so the CLI reads the file as it loads: a broken one is one error line
    from softprompt.config import (
        EvalConfig,
        EvalMethod,
        EvalMode,
        Init,
        LMAdaptConfig,
        Method,
        Objective,
        Policy,
        PromptConfig,
        RegistryConfig,
        TrainConfig,
        ValidateConfig,
        from_section,
        help_of,
        load_params,
        param_value,
        training_configs,
    )
except SoftpromptError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

app = typer.Typer(
    help="Prompt tuning (Lester et al., 2021) for frozen T5 models: train, evaluate and ship soft prompts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def setting(path: str, *decls: str, doc: type | str, **kwargs: Any) -> Any:
    """An option for the params.yaml setting at `path`. Left unset it is None and the command takes the value of
    params.yaml (or of --profile), so --help shows that value rather than a number typed here. Its help text is
    the config field's own description (`doc` a config class: the field named as the path's last part) or `doc`."""
    text = help_of(doc, path.rsplit(".", 1)[-1]) if isinstance(doc, type) else doc
    value = param_value(path)
    shown = "''" if value == "" else value
    return typer.Option(*decls, help=text, show_default=f"{shown}, params.yaml {path}", **kwargs)


Task = Annotated[str, typer.Option("--task", "-t", help="Task name, e.g. rte, cb, boolq (see `softprompt tasks`).")]
Data = Annotated[Path | None, typer.Option(
    help="Directory with the task's files in the official format (e.g. ../shared/data/superglue/RTE); "
         "omit to load the dataset from the Hugging Face Hub.")]
Profile = Annotated[str | None, typer.Option(
    help="A profile of params.yaml (smoke, local, paper) whose values replace the defaults.")]
Model = Annotated[str | None, setting(
    "model", doc="Base model: a Hub id, a local directory, a gs:// URI, or `tiny`.")]
Device = Annotated[str | None, setting(
    "inference.device", "--device", doc="Where the model runs: auto (cuda, else xla when PJRT_DEVICE is set, else "
                                        "cpu), cpu, cuda, cuda:N or xla.")]
Dtype = Annotated[str | None, setting(
    "inference.dtype", "--dtype", doc="The base's weights: auto (bfloat16 where the device computes it natively, "
                                      "else float32), float32 or bfloat16.")]


def profile_for(profile: str | None, model: str | None) -> str | None:
    """`--model tiny` without `--profile` runs with the smoke profile: tiny exists for tests and smoke runs,
    and the paper's defaults (batch 32 x 30K steps, 128 x 512-token LM batches) make no sense for it."""
    if profile is None and model == "tiny":
        typer.echo("note: --model tiny uses --profile smoke for unset options", err=True)
        return "smoke"
    return profile


def quiet_libraries() -> None:
    """Keep library chatter off the terminal; our own messages and progress bars stay."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("transformers", "peft", "datasets", "accelerate", "httpx", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def progress_to_stderr() -> contextlib.AbstractContextManager:
    """Progress bars and training logs go to stderr, so stdout carries only the result (pipe-friendly)."""
    return contextlib.redirect_stdout(sys.stderr)


@app.command()
def train(
    task: Task,
    output: Annotated[Path, typer.Option(help="Directory to write the prompt to (replaced atomically).")],
    model: Model = None,
    data: Data = None,
    profile: Profile = None,
    method: Annotated[Method | None, setting("train.method", doc=TrainConfig)] = None,
    prompt_length: Annotated[int | None, setting("prompt.length", "--prompt-length", doc=PromptConfig)] = None,
    init: Annotated[Init | None, setting("prompt.init", doc=PromptConfig)] = None,
    steps: Annotated[int | None, setting("train.steps", doc=TrainConfig)] = None,
    batch_size: Annotated[int | None, setting("train.batch_size", doc=TrainConfig)] = None,
    lr: Annotated[float | None, setting("train.optimizer.prompt.lr", doc=TrainConfig)] = None,
    seed: Annotated[int | None, setting("train.seed", doc=TrainConfig)] = None,
    eval_every: Annotated[int | None, setting("train.eval_every", doc=TrainConfig)] = None,
    early_stopping_patience: Annotated[int | None, setting("train.early_stopping_patience", doc=TrainConfig)] = None,
    grad_accumulation: Annotated[int | None, setting("train.grad_accumulation", doc=TrainConfig)] = None,
    taskless: Annotated[bool | None, setting("train.taskless", "--taskless/--with-task-prefix",
                                             doc=TrainConfig)] = None,
    target_sentinel: Annotated[bool | None, setting("train.target_sentinel", "--target-sentinel/--no-target-sentinel",
                                                    doc=TrainConfig)] = None,
    fsdp: Annotated[bool | None, setting("train.fsdp", "--fsdp/--no-fsdp", doc=TrainConfig)] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        help="Checkpoints go to CHECKPOINT_DIR/KEY (default OUTPUT.checkpoints/KEY), KEY naming the run: task, "
             "method, base, data, prompt length, init, seed, optimizer and lengths.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint of the same run (same KEY) if "
                                              "one exists; another run's checkpoints are never resumed.")] = True,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep the checkpoints after success.")] = False,
    loss_history: Annotated[Path | None, typer.Option(
        help="Also write the training loss curve (step,loss) to this CSV file, for `dvc plots`.")] = None,
) -> None:
    """Train a soft prompt on a task (or, with --method model, tune the whole model)."""
    from softprompt.training import train as run_train

    params = load_params(profile_for(profile, model))
    prompt_cfg, train_cfg, eval_cfg = training_configs(
        params, prompt_length=prompt_length, init=init and init.value, method=method and method.value, steps=steps,
        batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
        early_stopping_patience=early_stopping_patience, grad_accumulation=grad_accumulation, taskless=taskless,
        target_sentinel=target_sentinel, fsdp=fsdp)
    with progress_to_stderr():
        meta = run_train(task, model or params["model"], data, output, prompt_cfg, train_cfg, eval_cfg,
                         checkpoint_dir=checkpoint_dir, resume=resume, keep_checkpoints=keep_checkpoints)
    from softprompt import distributed

    if not distributed.is_main():  # under torchrun, rank 0 writes and reports; the others end here
        return
    if loss_history is not None:
        from softprompt.plots import write_loss_history

        write_loss_history(loss_history, meta["loss_curve"])
    summary = {k: meta[k] for k in ("task", "method", "base_model", "prompt_length", "steps_trained")}
    summary["validation"] = {k: v for k, v in meta["metrics"]["validation"].items() if k != "confusion_matrix"}
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"wrote {output}")


@app.command()
def evaluate(
    task: Task,
    output: Annotated[Path, typer.Option(help="Metrics JSON to write; per-example predictions go beside it "
                                              "as NAME.predictions.jsonl.")],
    prompt: Annotated[Path | None, typer.Option(help="A prompt directory from `softprompt train`.")] = None,
    model: Model = None,
    data: Data = None,
    split: Annotated[str | None, setting("eval.split", doc=EvalConfig)] = None,
    mode: Annotated[EvalMode | None, setting("eval.mode", doc=EvalConfig)] = None,
    method: Annotated[EvalMethod | None, typer.Option(
        help="prompt: base model + --prompt; model: a tuned model given as --model; "
             "design: a zero-shot text instruction to the frozen T5 (no training; add --shots K for K solved "
             "training examples in front of the input). This is not the paper's 'prompt design' baseline, "
             "which is GPT-3 few-shot. Default: prompt when --prompt is given, else design.")] = None,
    shots: Annotated[int | None, setting(
        "eval.shots", doc="--method design only: K training examples (fixed by --seed) in front of the input, each "
                          "as 'INPUT answer: TARGET'.")] = None,
    seed: Annotated[int | None, setting("train.seed", doc="Seed choosing the --shots examples.")] = None,
    batch_size: Annotated[int | None, setting("eval.batch_size", doc=EvalConfig)] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    profile: Profile = None,
    taskless: Annotated[bool | None, typer.Option("--taskless/--with-task-prefix",
                                                  help="Drop the task-name prefix (default: as trained).")] = None,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Evaluate a prompt (or a tuned model, or a zero-/few-shot instruction) and print the task's metrics."""
    from softprompt.evaluation import run_evaluation

    params = load_params(profile)
    cfg = from_section(EvalConfig, params["eval"], mode=mode and mode.value, batch_size=batch_size, split=split,
                       shots=shots)
    if method is None:
        method = EvalMethod.prompt if prompt is not None else EvalMethod.design
        if method == EvalMethod.design:
            typer.echo("note: no --prompt given: evaluating a text instruction to the frozen model "
                       "(--method design)", err=True)
    if model is None and method != EvalMethod.prompt:
        model = params["model"]
    with progress_to_stderr():
        result = run_evaluation(task, output, prompt=prompt, model=model, data=data, mode=cfg.mode, split=cfg.split,
                                batch_size=cfg.batch_size, method=method.value, limit=limit, taskless=taskless,
                                shots=shots if shots is not None else cfg.shots if method == EvalMethod.design else 0,
                                seed=params["train"]["seed"] if seed is None else seed, device=device, dtype=dtype)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=2))
    typer.echo(f"wrote {output}")


@app.command("tasks")
def list_tasks() -> None:
    """List the tasks, their score (the metric or mean of metrics selection and promotion use) and labels."""
    from softprompt.tasks import TASKS, get_task

    get_task("rte")  # registers all
    for name, t in sorted(TASKS.items()):
        labels = ", ".join(t.label_names) if t.label_names else "(free text)"
        typer.echo(f"{name:10s} {t.score_description:24s} {labels:40s} {t.description}")


@app.command()
def preview(
    task: Task,
    data: Data = None,
    split: Annotated[str | None, setting("eval.split", doc="Split to show: train, validation or test.")] = None,
    limit: Annotated[int | None, typer.Option(help="Show only the first N formatted rows.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the rows to this .jsonl file instead of "
                                                     "printing them.")] = None,
    taskless: Annotated[bool, typer.Option("--taskless/--with-task-prefix",
                                           help="Drop the task-name prefix (paper's taskless variant).")] = False,
) -> None:
    """Show exactly what the model sees: one JSON line per example with idx, inputs and targets."""
    from softprompt.io import write_jsonl
    from softprompt.tasks import get_task
    from softprompt.tasks.loading import preview_rows

    if limit is not None and limit < 1:
        raise SoftpromptError(f"--limit must be >= 1, got {limit}")
    rows = preview_rows(get_task(task, taskless=taskless), data, split or param_value("eval.split"), limit)
    if output is not None:
        write_jsonl(output, rows)
        typer.echo(f"wrote {len(rows)} rows to {output}", err=True)
        return
    for row in rows:
        typer.echo(json.dumps(row, ensure_ascii=False))


Repo = Annotated[Path | None, typer.Option(
    help="The registry git repo (a clone of this project); default: the git repo of the current directory.")]

registry_app = typer.Typer(help="The prompt registry: register, promote, pull, list and show versions of each task's "
                                "prompt (DVC files, GTO tags).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command()
def register(
    task: Task,
    prompt: Annotated[Path, typer.Option(help="The prompt directory written by `softprompt train`.")],
    metrics: Annotated[Path, typer.Option(help="The metrics JSON written by `softprompt evaluate` "
                                               "(its main_metric drives the promotion gate).")],
    run_id: Annotated[str | None, typer.Option(help="Pipeline run id recorded in the lineage "
                                                    "(default $SOFTPROMPT_RUN_ID, else `manual`).")] = None,
    promote: Annotated[Policy | None, setting("registry.promote", doc=RegistryConfig)] = None,
    repo: Repo = None,
    remote: Annotated[str | None, setting("registry.remote", doc=RegistryConfig)] = None,
    code_version: Annotated[str | None, typer.Option(help="Code version to record (default: the repo's git "
                                                          "commit).")] = None,
) -> None:
    """Add an immutable version of a task's prompt to the registry (DVC remote + git tag), then maybe promote it."""
    from dataclasses import asdict

    from softprompt import registry

    result = registry.register(repo, task, prompt, metrics, run_id=run_id, policy=promote and promote.value,
                               settings=registry.Settings.load(remote), code=code_version)
    typer.echo(json.dumps(asdict(result), indent=2))
    if not result.new:
        typer.echo(result.reason)
        return
    state = "promoted to production" if result.promoted else "not promoted"
    typer.echo(f"registered {result.tag}; {state}: {result.reason}")


@registry_app.command()
def promote(
    task: Task,
    version: Annotated[str, typer.Option(help="The version to promote: 3, v3 or v3.0.0.")],
    force: Annotated[bool, typer.Option(help="Promote even if it does not beat production by the margin "
                                             "(e.g. a rollback).")] = False,
    margin: Annotated[float | None, setting("registry.promotion_margin", "--margin", doc=RegistryConfig)] = None,
    repo: Repo = None,
) -> None:
    """Make a version the task's production prompt if its main metric beats production's (other tasks untouched)."""
    from softprompt import registry

    promoted, reason = registry.promote(repo, task, version, force=force,
                                        settings=registry.Settings.load(margin=margin))
    if not promoted:
        raise SoftpromptError(f"{task} {version} not promoted: {reason}")
    typer.echo(f"{task} {version} is now production: {reason}")


@registry_app.command()
def pull(
    task: Task,
    version: Annotated[str | None, typer.Option(help="A version (3, v3, v3.0.0); default: the production one.")]
    = None,
    output: Annotated[Path | None, typer.Option(help="Also copy the verified prompt here "
                                                     "(default: leave it at registry/TASK/...).")] = None,
    repo: Repo = None,
) -> None:
    """Fetch a task's production prompt (or a version) from the DVC remote and verify its hash."""
    from softprompt import registry

    path, version_info = registry.pull(repo, task, version, output)
    typer.echo(f"{task} {version_info.name} ({version_info.main_metric}={version_info.value}) verified "
               f"{version_info.md5}: {path}")


@registry_app.command("list")
def registry_list(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task's versions.")] = None,
    repo: Repo = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows instead of a table.")] = False,
) -> None:
    """Show each task's versions, their main metric, and which one is in production."""
    from softprompt.registry import summary_rows

    rows = summary_rows(repo, task)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no versions registered" + (f" for {task}" if task else ""))
        return
    typer.echo(f"{'task':8s} {'version':8s} {'metric':22s} {'stage':6s} {'run id':24s} registered")
    for r in rows:
        metric = f"{r['main_metric']}={r['value']:g}" if r["value"] is not None else "-"
        typer.echo(f"{r['task']:8s} {r['version']:8s} {metric:22s} {r['stage']:6s} {r['run_id']:24s} "
                   f"{r['registered_at']}")


@registry_app.command("show")
def registry_show(
    task: Annotated[str, typer.Argument(help="The task whose versions to show, e.g. rte.")],
    plot: Annotated[Path | None, typer.Option(help="Also write the main score of each version as a chart "
                                                   "(a .png file).")] = None,
    repo: Repo = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows instead of a table.")] = False,
) -> None:
    """A task's versions over time: metrics, data version, run id, stage; `*` marks production."""
    from softprompt import registry
    from softprompt.registry import show

    rows = registry.history(repo, task)
    if plot is not None:
        show.plot(rows, plot)
    typer.echo(json.dumps(rows, indent=2) if as_json else show.table(rows))
    if plot is not None:
        typer.echo(f"wrote {plot}", err=True)


@app.command()
def validate(
    task: Task,
    data: Annotated[Path, typer.Option(help="Directory with the task's split files in the official format "
                                            "(e.g. ../shared/data/superglue/RTE).")],
    report: Annotated[Path, typer.Option(help="Directory for the report (replaced atomically): validation.json "
                                              "and the Great Expectations Data Docs site in data_docs/.")],
    output: Annotated[Path | None, typer.Option(
        help="Where to write the validated dataset (the split files unchanged, plus validated.json) when every "
             "expectation passes; point `softprompt train --data` at it. Untouched on failure.")] = None,
    split: Annotated[list[str] | None, typer.Option(
        "--split", help="Validate only this split (repeatable). Default: train and validation, and test "
                        "when its file exists.")] = None,
    min_rows: Annotated[int | None, setting("validate.min_rows", doc=ValidateConfig)] = None,
    min_class_share: Annotated[float | None, setting("validate.min_class_share", doc=ValidateConfig)] = None,
    min_text_chars: Annotated[int | None, setting("validate.min_text_chars", doc=ValidateConfig)] = None,
    max_text_chars: Annotated[int | None, setting("validate.max_text_chars", doc=ValidateConfig)] = None,
    examples: Annotated[int | None, setting("validate.examples", doc=ValidateConfig)] = None,
    docs: Annotated[bool, typer.Option("--docs/--no-docs", help="Build the Data Docs HTML site.")] = True,
    profile: Profile = None,
) -> None:
    """Validate a task's data with Great Expectations; exit 1 (with a summary) if any expectation fails."""
    from softprompt.validation import summary
    from softprompt.validation import validate as run_validate

    params = load_params(profile)["validate"]
    cfg = from_section(ValidateConfig, params, min_rows=min_rows, min_class_share=min_class_share,
                       min_text_chars=min_text_chars, max_text_chars=max_text_chars, examples=examples)
    result = run_validate(task, data, report, cfg, output=output, splits=split or None, docs=docs)
    where = f"{result['report']}" + (f" and {report / result['data_docs']}" if result["data_docs"] else "")
    if not result["success"]:
        typer.echo(summary(result), err=True)
        typer.echo(f"report: {where}", err=True)
        raise typer.Exit(1)
    typer.echo(summary(result))
    typer.echo(f"report: {where}")
    if output is not None:
        typer.echo(f"wrote validated data to {output}")


@app.command("lm-adapt")
def lm_adapt(
    output: Annotated[Path | None, typer.Option(
        help="Directory for the adapted checkpoint (replaced atomically); default CACHE_ROOT/KEY.")] = None,
    model: Annotated[str | None, setting(
        "lm_adapt.model", doc="Model to continue pretraining: a Hub id, a local directory, a gs:// URI, or `tiny` "
                              "(then this is pretraining from scratch).")] = None,
    corpus: Annotated[str | None, setting(
        "lm_adapt.corpus", doc="Text: a .txt (a text a line) or .jsonl file, a directory of them, "
                               "hf:DATASET[:CONFIG] (streamed), or c4 (= hf:allenai/c4:en).")] = None,
    objective: Annotated[Objective | None, setting("lm_adapt.objective", doc=LMAdaptConfig)] = None,
    steps: Annotated[int | None, setting("lm_adapt.steps", doc=LMAdaptConfig)] = None,
    cache_root: Annotated[Path | None, typer.Option(
        help="Content-addressed store: reuse CACHE_ROOT/KEY if this base, objective, steps, corpus and recipe "
             "were trained before; otherwise train and store it there.")] = None,
    force: Annotated[bool, typer.Option(help="Retrain even if a checkpoint with the same key exists.")] = False,
    profile: Profile = None,
    batch_size: Annotated[int | None, setting("lm_adapt.batch_size", doc=LMAdaptConfig)] = None,
    grad_accumulation: Annotated[int | None, setting("lm_adapt.grad_accumulation", doc=LMAdaptConfig)] = None,
    lr: Annotated[float | None, setting("lm_adapt.lr", doc=LMAdaptConfig)] = None,
    warmup_steps: Annotated[int | None, setting("lm_adapt.warmup_steps", doc=LMAdaptConfig)] = None,
    max_source_length: Annotated[int | None, setting("lm_adapt.max_source_length", doc=LMAdaptConfig)] = None,
    max_target_length: Annotated[int | None, setting("lm_adapt.max_target_length", doc=LMAdaptConfig)] = None,
    noise_density: Annotated[float | None, setting("lm_adapt.noise_density", doc=LMAdaptConfig)] = None,
    mean_noise_span_length: Annotated[float | None, setting("lm_adapt.mean_noise_span_length",
                                                            doc=LMAdaptConfig)] = None,
    eval_every: Annotated[int | None, setting("lm_adapt.eval_every", doc=LMAdaptConfig)] = None,
    eval_examples: Annotated[int | None, setting("lm_adapt.eval_examples", doc=LMAdaptConfig)] = None,
    validation_corpus: Annotated[str | None, typer.Option(
        help="Separate validation text (same forms as --corpus); then nothing is held out.")] = None,
    text_field: Annotated[str | None, setting("lm_adapt.text_field", doc=LMAdaptConfig)] = None,
    seed: Annotated[int | None, setting("lm_adapt.seed", doc=LMAdaptConfig)] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        help="Where checkpoints go (default OUTPUT.checkpoints/KEY).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint if one exists.")] = True,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep the checkpoints after success.")] = False,
    from_scratch: Annotated[str | None, typer.Option(
        help="Pretrain a NEW model of this named T5 1.1 config (params.yaml models:, e.g. mini) instead of "
             "continuing --model; needs --tokenizer or --vocab-size.")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        help="With --from-scratch: a SentencePiece file (spiece.model), tokenizer directory or Hub id.")] = None,
    vocab_size: Annotated[int | None, typer.Option(
        help="With --from-scratch: train a SentencePiece vocabulary of N pieces on the corpus "
             "(params.yaml pretrain.vocab_size is the suggested size).")] = None,
    mix: Annotated[list[str] | None, typer.Option(
        help="TASK=DIR: mix the task's train split into the corpus as labelled examples (T5's multi-task "
             "mixture); repeat for several tasks. Only the train split is read.")] = None,
    mix_rate: Annotated[float | None, setting("pretrain.mixture_rate", "--mix-rate",
                                              doc="Share of labelled examples in the mixture.")] = None,
    mix_prefix: Annotated[str | None, setting("pretrain.mixture_prefix", "--mix-prefix",
                                              doc="Text before each labelled example, in place of its task-name "
                                                  "prefix.")] = None,
) -> None:
    """Continue a model's pretraining (LM adaptation with prefix-LM, or span corruption), or pretrain a new one
    (--from-scratch); writes a checkpoint that `train --model DIR` takes, plus lm_adapt_metrics.json (loss
    curve, validation loss, tokens/s)."""
    from softprompt.lm_adapt import lm_adapt as run_lm_adapt

    section = load_params(profile_for(profile, model))["lm_adapt"]
    cfg = from_section(LMAdaptConfig, section, objective=objective and objective.value, steps=steps,
                       batch_size=batch_size, grad_accumulation=grad_accumulation, lr=lr, warmup_steps=warmup_steps,
                       max_source_length=max_source_length, max_target_length=max_target_length,
                       noise_density=noise_density, mean_noise_span_length=mean_noise_span_length,
                       eval_every=eval_every, eval_examples=eval_examples, text_field=text_field, seed=seed)
    from softprompt.pretrain import TaskMixture, parse_mix
    from softprompt.pretrain import from_scratch as run_from_scratch

    pretrain = load_params()["pretrain"]
    mixture = TaskMixture(parse_mix(mix), mix_rate if mix_rate is not None else pretrain["mixture_rate"],
                          mix_prefix if mix_prefix is not None else pretrain["mixture_prefix"]) if mix else None
    options = dict(cache_root=cache_root, validation_corpus=validation_corpus, checkpoint_dir=checkpoint_dir,
                   resume=resume, keep_checkpoints=keep_checkpoints, force=force, mixture=mixture)
    with progress_to_stderr():
        if from_scratch is not None:
            if output is None:
                raise SoftpromptError("--from-scratch needs --output DIR")
            meta = run_from_scratch(from_scratch, corpus or section["corpus"], output, cfg, tokenizer=tokenizer,
                                    vocab_size=vocab_size, **options)
        else:
            if tokenizer is not None or vocab_size is not None:
                raise SoftpromptError("--tokenizer and --vocab-size only apply with --from-scratch NAME")
            meta = run_lm_adapt(model or section["model"], corpus or section["corpus"], output, cfg, **options)
    from softprompt import distributed

    if not distributed.is_main():  # under torchrun, rank 0 reports
        return
    keys = ("key", "output", "reused", "base_model", "objective", "steps_trained", "validation_loss_before",
            "validation_loss_after", "tokens_per_second")
    typer.echo(json.dumps({k: meta.get(k) for k in keys}, indent=2))
    typer.echo(f"{'reused' if meta['reused'] else 'wrote'} {meta['output']}")


@app.command()
def split(
    task: Task,
    source: Annotated[Path, typer.Option(help="One labelled file in the task's official format, e.g. "
                                             "../shared/data/text/ag_news_test.csv.")],
    output: Annotated[Path, typer.Option(help="Directory to write train + validation files to (replaced "
                                              "atomically).")],
    validation_rows: Annotated[int | None, setting("split.validation_rows",
                                                   doc="Rows for validation; the rest are train.")] = None,
    seed: Annotated[int | None, setting("split.seed", doc="Seed of the permutation.")] = None,
) -> None:
    """Cut one labelled file into train and validation splits by a fixed seed (tasks with no dev set: ag_news)."""
    from softprompt.tasks import get_task
    from softprompt.tasks.news import AG_NEWS, split_file

    if get_task(task) is not AG_NEWS:
        raise SoftpromptError(f"split: only ag_news is shipped as one file to split; {task} has its own splits")
    defaults = load_params()["split"]
    counts = split_file(source, output, validation_rows if validation_rows is not None else defaults["validation_rows"],
                        seed if seed is not None else defaults["seed"])
    typer.echo(f"wrote {output}: " + ", ".join(f"{k} {v} rows" for k, v in counts.items()))


@app.command()
def ensemble(
    task: Task,
    prompt: Annotated[list[Path], typer.Option(help="A prompt directory from `softprompt train`; repeat for each "
                                                    "prompt (at least 2, same task, length and base model).")],
    output: Annotated[Path, typer.Option(help="Directory to write ensemble.json, ensemble.md and "
                                              "predictions.jsonl to (replaced atomically).")],
    data: Data = None,
    model: Annotated[str | None, typer.Option(help="Base model (default: the one the prompts were trained "
                                                   "on).")] = None,
    split: Annotated[str | None, setting("eval.split", doc=EvalConfig)] = None,
    mode: Annotated[EvalMode | None, setting("eval.mode", doc=EvalConfig)] = None,
    batch_size: Annotated[int | None, setting("eval.batch_size", doc="Examples per forward pass (each is "
                                                                     "replicated once per prompt).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    profile: Profile = None,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Evaluate N prompts in one batched pass and majority-vote them (paper, Table 3)."""
    from softprompt.ensemble import markdown_table, run_ensemble

    cfg = from_section(EvalConfig, load_params(profile)["eval"], mode=mode and mode.value, batch_size=batch_size,
                       split=split)
    summary = run_ensemble(task, prompt, output, data=data, model=model, split=cfg.split, mode=cfg.mode,
                           batch_size=cfg.batch_size, limit=limit, device=device, dtype=dtype)
    typer.echo(markdown_table(summary))
    typer.echo(f"wrote {output}")


@app.command()
def neighbors(
    prompt: Annotated[Path, typer.Option(help="A prompt directory from `softprompt train`.")],
    output: Annotated[Path, typer.Option(help="Directory to write neighbors.json and neighbors.md to "
                                              "(replaced atomically).")],
    model: Annotated[str | None, typer.Option(help="Base model (default: the one the prompt was trained "
                                                   "on).")] = None,
    k: Annotated[int | None, setting("interpret.neighbors", "--k", "-k",
                                     doc="Nearest vocabulary tokens to list per position.")] = None,
    label: Annotated[list[str] | None, typer.Option(help="A class label to look for among the neighbours; repeat "
                                                         "for each (default: the prompt's task labels).")] = None,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """List the nearest vocabulary tokens of every prompt position (paper, section 7)."""
    from softprompt.interpret import run_neighbors

    k = k if k is not None else param_value("interpret.neighbors")
    result = run_neighbors(prompt, output, model=model, k=k, labels=label or None, device=device, dtype=dtype)
    typer.echo(f"{result['positions_with_label']} of {result['prompt_length']} positions have a class label "
               f"among their top-{k} neighbours")
    typer.echo(f"wrote {output}")


@app.command()
def transfer(
    prompt: Annotated[Path, typer.Option(help="A prompt directory from `softprompt train` on the source task.")],
    source_task: Annotated[str, typer.Option(help="The task the prompt was trained on, e.g. qqp or squad.")],
    target_task: Annotated[list[str], typer.Option(help="A task to transfer to, e.g. mrpc or bioasq; repeat for "
                                                        "each.")],
    output: Annotated[Path, typer.Option(help="Directory to write transfer.json, transfer.md and predictions "
                                              "to (replaced atomically).")],
    source_data: Annotated[Path | None, typer.Option(help="Directory with the source task's files (omit: "
                                                          "the Hub).")] = None,
    target_data: Annotated[list[Path] | None, typer.Option(
        help="Directory with a target task's files, one per --target-task in the same order, or one shared by "
             "all (omit: the Hub).")] = None,
    model: Annotated[str | None, typer.Option(help="Base model (default: the one the prompt was trained "
                                                   "on).")] = None,
    mode: Annotated[EvalMode | None, setting("eval.mode", doc="generate: exact match of the generated text "
                                                              "(paper); rank: score the source's label strings.")]
    = None,
    batch_size: Annotated[int | None, setting("eval.batch_size", doc=EvalConfig)] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples of each task.")] = None,
    skip_source: Annotated[bool, typer.Option(help="Do not evaluate the source task's validation split.")] = False,
    profile: Profile = None,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Evaluate a prompt on its source task and zero-shot on related tasks (paper, Tables 1 and 2)."""
    from softprompt.transfer import markdown_table, run_transfer

    dirs = list(target_data or [])
    if len(dirs) not in (0, 1, len(target_task)):
        raise SoftpromptError(f"give one --target-data per --target-task ({len(target_task)}), one shared "
                              f"directory, or none; got {len(dirs)}")
    dirs = dirs * len(target_task) if len(dirs) == 1 else dirs or [None] * len(target_task)
    cfg = from_section(EvalConfig, load_params(profile)["eval"], mode=mode and mode.value, batch_size=batch_size)
    report = run_transfer(prompt, source_task, list(zip(target_task, dirs)), output, source_data=source_data,
                          model=model, mode=cfg.mode, batch_size=cfg.batch_size, limit=limit,
                          skip_source=skip_source, device=device, dtype=dtype)
    typer.echo(markdown_table(report))
    typer.echo(f"wrote {output}")


@app.command()
def serve(
    registry: Annotated[str, typer.Option(help="The prompt registry: a checkout (directory) or a git URL (cloned, "
                                               "fetched on every check).")],
    model: Annotated[str | None, setting("model", doc="The frozen base every prompt must have been trained on (Hub "
                                                      "id, directory, gs:// URI or `tiny`).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated tasks to serve, e.g. rte,cb (default: every "
                                                   "task with a production prompt, and new ones when promoted).")]
    = None,
    host: Annotated[str | None, setting("serve.host", doc="Address to listen on.")] = None,
    port: Annotated[int | None, setting("serve.port", doc="HTTP port.")] = None,
    max_batch_size: Annotated[int | None, setting("serve.max_batch_size",
                                                  doc="Rows per model pass, across tasks.")] = None,
    max_wait_ms: Annotated[float | None, setting("serve.max_wait_ms",
                                                 doc="How long a batch waits for more rows.")] = None,
    poll_interval: Annotated[float | None, setting("serve.poll_interval_s", "--poll-interval",
                                                   doc="Seconds between registry checks for promotions.")] = None,
    max_queue_rows: Annotated[int | None, setting("serve.max_queue_rows",
                                                  doc="Rows waiting for a pass; beyond, 503 + Retry-After.")] = None,
    request_timeout: Annotated[float | None, setting("serve.request_timeout_s", "--request-timeout",
                                                     doc="Seconds a request may wait for a model pass (then 503)."
                                                     )] = None,
    device: Device = None,
    dtype: Dtype = None,
) -> None:
    """Serve every task's production prompt from one frozen model over HTTP (KServe v1/v2 routes, /metrics)."""
    from softprompt.serving import serve as run_serve

    run_serve(model or param_value("model"), registry, tasks, device=device, dtype=dtype, host=host, port=port,
              max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, poll_interval_s=poll_interval,
              max_queue_rows=max_queue_rows, request_timeout_s=request_timeout)


def run_app(application: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a typer app (this CLI, `python -m softprompt.cluster`, `python -m pipelines.run`) and return its exit
    status: a SoftpromptError prints one `error: ...` line and gives 2; a usage error prints click's message
    and gives its status (2). Ctrl-C gives 130 (typer turns it into that exit status)."""
    try:
        status = application(args=argv, standalone_mode=False)
    except SoftpromptError as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    except typer.TyperException as e:  # typer's own click: usage errors, and --help with no arguments
        show = getattr(e, "show", None)
        show() if show else typer.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except typer.Abort:
        return 1
    return status if isinstance(status, int) else 0


def main() -> None:
    quiet_libraries()
    status = run_app(app)
    if status == 130:  # Ctrl-C (typer's status for it)
        typer.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
