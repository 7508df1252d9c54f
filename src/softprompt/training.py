"""Training a soft prompt (or, as the paper's baseline, the whole model) with the Hugging Face Trainer.

The Trainer supplies checkpoint/resume, bf16 on GPU, gradient accumulation, multi-GPU (torchrun, FSDP
through an accelerate config) and progress bars. What is ours: the paper's optimizer settings, scoring
the validation split with the task's own metric (by generating the label text), and writing the
prompt atomically with its lineage.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.optimization import Adafactor
from transformers.trainer_utils import get_last_checkpoint

from softprompt import __version__
from softprompt.config import EvalConfig, PromptConfig, TrainConfig
from softprompt.errors import SoftpromptError
from softprompt.evaluation import Encoding, evaluate_examples
from softprompt.io import atomic_dir, file_md5, write_json
from softprompt.models import Base, load_base, trainable_parameters
from softprompt.prompt import META_FILE, attach_prompt, save_prompt
from softprompt.tasks import Example, Task, get_task, load_examples
from softprompt.tasks.loading import find_split_file

log = logging.getLogger(__name__)


class ExampleDataset(torch.utils.data.Dataset):
    """Tokenized examples: input_ids, attention_mask, labels (padding is the collator's job)."""

    def __init__(self, examples: list[Example], encoding: Encoding):
        enc = encoding.tokenizer([e.inputs for e in examples], max_length=encoding.max_source_length,
                                 truncation=True)
        self.rows = [{"input_ids": ids, "attention_mask": mask, "labels": encoding.target_ids(e.targets)}
                     for ids, mask, e in zip(enc["input_ids"], enc["attention_mask"], examples)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


class ScoringTrainer(Trainer):
    """A Trainer whose evaluation is the task's metric on generated labels, not the eval loss.

    Overriding `evaluate` is the Trainer's extension point: best-checkpoint tracking and early stopping
    then work on the task's main metric.
    """

    def __init__(self, *args: Any, score_fn: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.score_fn = score_fn
        # T5's forward accepts **kwargs but its loss is a per-batch mean that ignores num_items_in_batch, so
        # the Trainer must scale the loss for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        result = self.score_fn(self.model)
        result = {f"{metric_key_prefix}_{k}": float(v) for k, v in result.items() if isinstance(v, int | float)}
        self.log(result)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, result)
        return result


def data_version(task: Task, data_dir: str | Path | None) -> dict[str, Any]:
    """What data was used: each split file's md5 (DVC's file hash), or the Hub dataset id."""
    if data_dir is None:
        return {"source": "hub", "dataset": list(task.hub or ())}
    files = {}
    for split in ("train", "validation"):
        try:
            path = find_split_file(task, data_dir, split)
        except SoftpromptError:
            continue
        files[path.name] = "md5:" + file_md5(path)
    return {"source": str(data_dir), "files": files}


def build_model(base: Base, task: Task, method: str, prompt_cfg: PromptConfig, seed: int):
    if method == "prompt":
        labels = task.label_names if prompt_cfg.init == "class-label" else None
        if prompt_cfg.init == "class-label" and labels is None:
            raise SoftpromptError(f"{task.name} has no class labels; use --init sampled-vocab or random")
        return attach_prompt(base, prompt_cfg, labels, seed)
    for p in base.model.parameters():
        p.requires_grad_(True)
    return base.model


def training_arguments(cfg: TrainConfig, checkpoint_dir: Path, has_eval: bool, main_metric: str,
                       progress: bool, **overrides: Any) -> TrainingArguments:
    """The Trainer settings shared by prompt training and LM adaptation; `overrides` replace any of them."""
    eval_steps = min(cfg.eval_every, cfg.steps)
    kwargs: dict[str, Any] = dict(
        output_dir=str(checkpoint_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size // cfg.grad_accumulation,
        gradient_accumulation_steps=cfg.grad_accumulation,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",  # paper: constant learning rate
        weight_decay=cfg.weight_decay,
        max_grad_norm=0.0,  # Adafactor clips its updates itself (clip_threshold=1.0); no gradient clipping
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model=main_metric if has_eval else None,
        greater_is_better=True,
        logging_steps=max(1, min(50, cfg.steps // 10)),
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    return TrainingArguments(**{**kwargs, **overrides})


def adafactor(cfg: TrainConfig) -> tuple[type, dict[str, Any]]:
    """The paper's optimizer: Adafactor, fixed learning rate, no parameter scaling, decay rate 0.8."""
    return Adafactor, {"lr": cfg.lr, "scale_parameter": False, "relative_step": False, "warmup_init": False,
                       "decay_rate": -cfg.decay_rate, "clip_threshold": 1.0}


def train(
    task_name: str,
    model_spec: str,
    data_dir: str | Path | None,
    output: str | Path,
    prompt_cfg: PromptConfig | None = None,
    train_cfg: TrainConfig | None = None,
    eval_cfg: EvalConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    keep_checkpoints: bool = False,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train and write a prompt (or, with method=model, a full checkpoint) to `output`.

    Checkpoints go to `checkpoint_dir` (default `<output>.checkpoints`); an interrupted run resumes
    from the last one. Returns the metadata written to softprompt.json.
    """
    prompt_cfg = prompt_cfg or PromptConfig()
    cfg = train_cfg or TrainConfig()
    eval_cfg = eval_cfg or EvalConfig()
    task = get_task(task_name, taskless=cfg.taskless)
    output = Path(output)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else output.with_name(output.name + ".checkpoints")

    train_examples = [e for e in load_examples(task, data_dir, "train") if e.targets != "<unk>"]
    if not train_examples:
        raise SoftpromptError(f"{task.name}: the train split has no labeled rows; check --data")
    try:
        val_examples = [e for e in load_examples(task, data_dir, "validation") if e.targets != "<unk>"]
    except SoftpromptError as e:
        if "missing the validation split" not in str(e):
            raise
        log.warning("%s; training without validation", e)
        val_examples = []

    base = load_base(model_spec)
    model = build_model(base, task, cfg.method, prompt_cfg, cfg.seed)
    encoding = Encoding(base.tokenizer, cfg.max_source_length, cfg.max_target_length, cfg.target_sentinel)

    def score_fn(m: Any) -> dict[str, Any]:
        result, _ = evaluate_examples(m, encoding, task, val_examples, eval_cfg.mode, eval_cfg.batch_size)
        return result

    args = training_arguments(cfg, checkpoint_dir, bool(val_examples), task.main_metric, progress)
    callbacks = list(callbacks or [])
    if cfg.early_stopping_patience and val_examples:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience))
    trainer = ScoringTrainer(
        model=model,
        args=args,
        data_collator=DataCollatorForSeq2Seq(base.tokenizer, model=None, label_pad_token_id=-100),
        train_dataset=ExampleDataset(train_examples, encoding),
        eval_dataset=ExampleDataset(val_examples[:1], encoding) if val_examples else None,
        optimizer_cls_and_kwargs=adafactor(cfg),
        callbacks=callbacks,
        score_fn=score_fn,
    )
    last = get_last_checkpoint(str(checkpoint_dir)) if resume and checkpoint_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    metrics = score_fn(trainer.model) if val_examples else {}

    meta = {
        "softprompt_version": __version__,
        "task": task.name,
        "method": cfg.method,
        "base_model": base.name,
        "base_fingerprint": base.fingerprint,
        "prompt_length": prompt_cfg.length if cfg.method == "prompt" else 0,
        "init": prompt_cfg.init if cfg.method == "prompt" else None,
        "train": asdict(cfg),
        "trainable_parameters": trainable_parameters(trainer.model),
        "steps_trained": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "data": data_version(task, data_dir),
        "metrics": {"validation": metrics},
        "train_seconds": round(time.time() - started, 2),
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        **(extra_meta or {}),
    }
    if cfg.method == "prompt":
        save_prompt(trainer.model, output, meta)
    else:
        save_full_model(trainer.model, base, output, meta)
    if not keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return meta


def save_full_model(model: Any, base: Base, output: Path, meta: dict[str, Any]) -> None:
    """A tuned model as a normal transformers checkpoint (usable as --model), with softprompt.json."""
    with atomic_dir(output) as tmp:
        model.save_pretrained(str(tmp))
        base.tokenizer.save_pretrained(str(tmp))
        write_json(tmp / META_FILE, meta)


def final_loss_drop(meta: dict[str, Any]) -> float:
    """First logged loss minus the last: > 0 means training lowered the loss."""
    curve = meta.get("loss_curve") or []
    if len(curve) < 2:
        return math.nan
    return curve[0]["loss"] - curve[-1]["loss"]
