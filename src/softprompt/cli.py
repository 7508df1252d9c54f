"""The `softprompt` command line. Every command is a thin layer over a library function.

Options left unset take their defaults from params.yaml (optionally a `--profile` of it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from softprompt.errors import SoftpromptError

app = typer.Typer(
    help="Prompt tuning (Lester et al., 2021) for frozen T5 models: train, evaluate and ship soft prompts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Method(str, Enum):
    prompt = "prompt"
    model = "model"


class EvalMethod(str, Enum):
    prompt = "prompt"
    model = "model"
    design = "design"


class Init(str, Enum):
    random = "random"
    sampled_vocab = "sampled-vocab"
    class_label = "class-label"


class Mode(str, Enum):
    generate = "generate"
    rank = "rank"


Task = Annotated[str, typer.Option("--task", "-t", help="Task name, e.g. rte, cb, boolq (see `softprompt tasks`).")]
Data = Annotated[Path | None, typer.Option(
    help="Directory with the task's files in the official format (e.g. ../shared/data/superglue/RTE); "
         "omit to load the dataset from the Hugging Face Hub.")]
Profile = Annotated[str | None, typer.Option(
    help="A profile of params.yaml (smoke, local, paper) whose values replace the defaults.")]
Model = Annotated[str | None, typer.Option(
    help="Base model: a Hub id (google/t5-base-lm-adapt), a local directory, a gs:// URI, or `tiny`.")]


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


@app.command()
def train(
    task: Task,
    output: Annotated[Path, typer.Option(help="Directory to write the prompt to (replaced atomically).")],
    model: Model = None,
    data: Data = None,
    profile: Profile = None,
    method: Annotated[Method | None, typer.Option(help="prompt: train only the soft prompt; "
                                                       "model: tune the whole model (baseline).")] = None,
    prompt_length: Annotated[int | None, typer.Option(help="Soft-prompt length P (default 100).")] = None,
    init: Annotated[Init | None, typer.Option(help="Prompt initialisation (default class-label).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (default 30000).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 0.3 prompt, 0.001 model).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps, keep the best.")] = None,
    early_stopping_patience: Annotated[int | None, typer.Option(help="Stop after N evaluations without "
                                                                     "improvement (0: never).")] = None,
    grad_accumulation: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    taskless: Annotated[bool | None, typer.Option("--taskless/--with-task-prefix",
                                                  help="Drop the task-name prefix from inputs.")] = None,
    target_sentinel: Annotated[bool | None, typer.Option(
        "--target-sentinel/--no-target-sentinel", help="Prepend <extra_id_0> to targets (span corruption + "
                                                       "sentinel setting); stripped at evaluation.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="Where checkpoints go "
                                                             "(default OUTPUT.checkpoints).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint if one exists.")] = True,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep the checkpoints after success.")] = False,
) -> None:
    """Train a soft prompt on a task (or, with --method model, tune the whole model)."""
    from softprompt.config import EvalConfig, PromptConfig, TrainConfig, from_section, load_params
    from softprompt.training import train as run_train

    params = load_params(profile)
    prompt_cfg = from_section(PromptConfig, params["prompt"], length=prompt_length, init=init and init.value)
    train_cfg = from_section(TrainConfig, params["train"], method=method and method.value, steps=steps,
                             batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
                             early_stopping_patience=early_stopping_patience, grad_accumulation=grad_accumulation,
                             taskless=taskless, target_sentinel=target_sentinel)
    eval_cfg = from_section(EvalConfig, params["eval"])
    meta = run_train(task, model or params["model"], data, output, prompt_cfg, train_cfg, eval_cfg,
                     checkpoint_dir=checkpoint_dir, resume=resume, keep_checkpoints=keep_checkpoints)
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
    split: Annotated[str | None, typer.Option(help="Split to evaluate: train, validation or test.")] = None,
    mode: Annotated[Mode | None, typer.Option(help="generate: exact match of the generated label (paper); "
                                                   "rank: score every label string.")] = None,
    method: Annotated[EvalMethod, typer.Option(
        help="prompt: base model + --prompt; model: a tuned model given as --model; "
             "design: the frozen model with the task's text instruction (no training).")] = EvalMethod.prompt,
    batch_size: Annotated[int | None, typer.Option(help="Examples per forward pass.")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N examples.")] = None,
    profile: Profile = None,
    taskless: Annotated[bool | None, typer.Option("--taskless/--with-task-prefix",
                                                  help="Drop the task-name prefix (default: as trained).")] = None,
) -> None:
    """Evaluate a prompt (or a tuned model, or prompt design) and print the task's official metrics."""
    from softprompt.config import EvalConfig, from_section, load_params
    from softprompt.evaluation import run_evaluation

    params = load_params(profile)
    cfg = from_section(EvalConfig, params["eval"], mode=mode and mode.value, batch_size=batch_size, split=split)
    if model is None and method != EvalMethod.prompt:
        model = params["model"]
    result = run_evaluation(task, output, prompt=prompt, model=model, data=data, mode=cfg.mode, split=cfg.split,
                            batch_size=cfg.batch_size, method=method.value, limit=limit, taskless=taskless)
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=2))
    typer.echo(f"wrote {output}")


@app.command("tasks")
def list_tasks() -> None:
    """List the tasks and their metrics."""
    from softprompt.tasks import TASKS, get_task

    get_task("rte")  # registers all
    for name, t in sorted(TASKS.items()):
        labels = ", ".join(t.label_names) if t.label_names else "(free text)"
        typer.echo(f"{name:10s} {t.main_metric:12s} {labels:40s} {t.description}")


def main() -> None:
    quiet_libraries()
    try:
        app()
    except SoftpromptError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
