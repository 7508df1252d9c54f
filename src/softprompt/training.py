"""Training a soft prompt (or, as the paper's baseline, the whole model) with the Hugging Face Trainer.

The Trainer supplies checkpoint/resume, bf16 on GPU and TPU, gradient accumulation, multi-GPU (torchrun, FSDP
through an accelerate config), TPUs through PyTorch/XLA (with softprompt.xla) and progress bars. What is
ours: the paper's optimizer settings, scoring the validation split with the task's own metric (by
generating the label text), and writing the prompt atomically with its lineage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.models.t5.modeling_t5 import T5Block
from transformers.trainer_utils import get_last_checkpoint

from softprompt import __version__, distributed, xla
from softprompt.config import EvalConfig, PromptConfig, TrainConfig
from softprompt.errors import SoftpromptError
from softprompt.evaluation import Encoding, predict, score
from softprompt.io import atomic_dir, copy_logs, file_md5, write_json
from softprompt.models import Base, load_base, trainable_parameters
from softprompt.optim import T5XAdafactor
from softprompt.prompt import META_FILE, attach_prompt, save_prompt
from softprompt.tasks import Example, Task, get_task, load_examples
from softprompt.tasks.base import SCORE
from softprompt.tasks.loading import find_split_file

log = logging.getLogger(__name__)
RUN_FILE = "run.json"  # in each run's checkpoint directory: the identity that run was keyed by
TENSORBOARD_DIR = "runs"  # TensorBoard event files: in the checkpoint directory while training, then in the output


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


class TokenMeanLossTrainer(Trainer):
    """A Trainer whose loss for one optimizer step is the mean over all that step's target tokens, however the
    step's batch is split into micro-batches (gradient accumulation) and processes (torchrun, TPU chips).

    T5's own loss is the mean over one micro-batch's tokens; averaging those means over micro-batches and ranks
    weighs a token of a short-target batch more than one of a long-target batch, so 2 processes would not
    train the prompt 1 process trains at the same global batch. The Trainer already counts the step's target
    tokens over micro-batches and ranks (`num_items_in_batch`, gathered with `average_tokens_across_devices`)
    when the model takes loss kwargs; T5's forward takes them but ignores them, so `compute_loss` divides the
    token sum by that count itself. The Trainer then scales neither for accumulation nor (through its own
    `num_processes` factor, which undoes DDP's gradient averaging) for the ranks.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch and passes it here

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        outputs = model(**inputs)
        loss = outputs["loss"]
        if num_items_in_batch is not None:
            logits, labels = outputs["logits"], inputs["labels"]
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten().to(logits.device),
                                                     ignore_index=-100, reduction="sum") / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


class ScoringTrainer(TokenMeanLossTrainer):
    """A Trainer whose evaluation is the task's metric on generated labels, not the eval loss.

    Overriding `evaluate` is the Trainer's extension point: best-checkpoint tracking and early stopping
    then work on the task's score (the mean of the paper's metrics, `Task.metrics`).
    """

    def __init__(self, *args: Any, score_fn: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.score_fn = score_fn
        self.results_by_step: dict[int, dict[str, Any]] = {}  # every evaluation's full result, by global step

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        full = self.score_fn(self.model)
        self.results_by_step[self.state.global_step] = full
        result = {f"{metric_key_prefix}_{k}": float(v) for k, v in full.items() if isinstance(v, int | float)}
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


def usable_prompt_config(task: Task, prompt_cfg: PromptConfig) -> PromptConfig:
    """`prompt_cfg`, except that class-label init on a task without class labels (WSC, ReCoRD, SQuAD, MRQA)
    falls back to sampled-vocab, as the paper does, with a one-line note."""
    if prompt_cfg.init != "class-label" or task.label_names:
        return prompt_cfg
    log.warning("note: %s has no class labels; class-label init falls back to sampled-vocab (as the paper does)",
                task.name)
    return replace(prompt_cfg, init="sampled-vocab")


def build_model(base: Base, task: Task, method: str, prompt_cfg: PromptConfig, seed: int):
    """The model to train: the base with a fresh soft prompt (`prompt_cfg` as `usable_prompt_config` gives
    it), or for method=model the whole base model, unfrozen."""
    if method == "prompt":
        labels = task.label_names if prompt_cfg.init == "class-label" else None
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
        per_device_train_batch_size=xla.per_device_batch(cfg.batch_size, cfg.grad_accumulation),
        gradient_accumulation_steps=cfg.grad_accumulation,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",  # paper: constant learning rate
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
        bf16=xla.use_bf16(),
        # TensorBoard event files, in OUTPUT_DIR/runs/<time>_<host>/ (the Trainer's default), copied into the output
        report_to=["tensorboard"],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        **xla.trainer_overrides(),
        **distributed.trainer_overrides(),
    )
    return TrainingArguments(**{**kwargs, **overrides})


def adafactor(cfg: TrainConfig) -> tuple[type, dict[str, Any]]:
    """The optimizer for the Trainer: Adafactor with T5X's semantics and the config's recipe (params.yaml
    `train.optimizer.<method>`, or `lm_adapt` for LM adaptation)."""
    return T5XAdafactor, cfg.optimizer()


@xla.on_every_chip  # with torch_xla: one process per TPU chip
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
    checkpoint_store: Any | None = None,
) -> dict[str, Any]:
    """Train and write a prompt (or, with method=model, a full checkpoint) to `output`.

    Checkpoints go to `<checkpoint_dir>/<run key>` (default `<output>.checkpoints/<run key>`); an interrupted
    run resumes from the last one of the same run only (`run_identity`). A `checkpoint_store` (e.g.
    softprompt.gcs.CheckpointMirror) keeps them durable beyond this machine: `restore(run_dir)` fills the run's
    directory before training, `save(checkpoint_dir)` follows each save, `discard(run_dir)` follows a finished
    run that keeps no checkpoints. Returns the metadata written to softprompt.json.
    """
    prompt_cfg = prompt_cfg or PromptConfig()
    cfg = train_cfg or TrainConfig()
    eval_cfg = eval_cfg or EvalConfig()
    task = get_task(task_name, taskless=cfg.taskless)
    output = Path(output)
    checkpoint_root = Path(checkpoint_dir) if checkpoint_dir else output.with_name(output.name + ".checkpoints")
    if cfg.method == "prompt":
        prompt_cfg = usable_prompt_config(task, prompt_cfg)

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
    identity = run_identity(task, cfg, prompt_cfg, base, data_dir)
    checkpoint_dir = run_checkpoint_dir(checkpoint_root, identity)
    if checkpoint_store is not None and distributed.is_main():  # one download; last_checkpoint broadcasts its pick
        checkpoint_store.restore(checkpoint_dir)
    model = build_model(base, task, cfg.method, prompt_cfg, cfg.seed)
    encoding = Encoding(base.tokenizer, cfg.max_source_length, cfg.max_target_length, cfg.target_sentinel)

    def score_fn(m: Any) -> dict[str, Any]:
        return sharded_score(m, encoding, task, val_examples, eval_cfg)

    args = training_arguments(cfg, checkpoint_dir, bool(val_examples), SCORE, progress)  # starts torchrun's group
    if cfg.fsdp:
        distributed.shard_frozen_blocks(model, (T5Block,))
    callbacks = list(callbacks or [])
    if checkpoint_store is not None:
        callbacks.append(MirrorCheckpoints(checkpoint_store))
    if cfg.early_stopping_patience and val_examples:
        callbacks.append(EarlyStoppingCallback(cfg.early_stopping_patience))
    trainer = ScoringTrainer(
        model=model,
        args=args,
        data_collator=xla.collator(base.tokenizer, cfg.max_source_length,
                                   cfg.max_target_length + int(cfg.target_sentinel)),  # + the sentinel
        train_dataset=ExampleDataset(train_examples, encoding),
        eval_dataset=ExampleDataset(val_examples[:1], encoding) if val_examples else None,
        optimizer_cls_and_kwargs=adafactor(cfg),
        callbacks=callbacks,
        score_fn=score_fn,
    )
    last = last_checkpoint(checkpoint_dir, resume)
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.time() - started
    metrics = final_metrics(trainer, score_fn) if val_examples else {}
    close_tensorboard(trainer)

    meta = {
        "softprompt_version": __version__,
        "task": task.name,
        "method": cfg.method,
        "base_model": base.name,
        "base_fingerprint": base.fingerprint,
        "prompt_length": prompt_cfg.length if cfg.method == "prompt" else 0,
        "init": prompt_cfg.init if cfg.method == "prompt" else None,
        "run_key": checkpoint_dir.name,
        "train": asdict(cfg),
        "trainable_parameters": trainable_parameters(trainer.model),
        "steps_trained": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "data": data_version(task, data_dir),
        "metrics": {"validation": metrics},
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(trainer.state.global_step / seconds, 3) if seconds > 0 else None,
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        "validation_curve": validation_curve(trainer),
        "best_step": best_step(trainer),
        "placement": {**xla.placement(trainer.model), "batch_per_process": args.per_device_train_batch_size,
                      "fsdp": cfg.fsdp, "frozen_bytes_per_process": distributed.local_bytes(
                          p for p in trainer.model.parameters() if not p.requires_grad)},
        **(extra_meta or {}),
    }
    if trainer.is_world_process_zero():  # one writer when several processes train (TPU chips, torchrun)
        model = xla.to_host(trainer.model)
        logs = checkpoint_dir / TENSORBOARD_DIR
        if cfg.method == "prompt":
            save_prompt(model, output, meta, logs)
        else:
            save_full_model(model, base, output, meta, logs)
    if not keep_checkpoints:
        remove_checkpoints(checkpoint_dir, checkpoint_root)
        if checkpoint_store is not None and distributed.is_main():
            checkpoint_store.discard(checkpoint_dir)
    return meta


class MirrorCheckpoints(TrainerCallback):
    """Hands each checkpoint the Trainer saved (after its rotation of old ones) to a checkpoint store."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.store.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def run_identity(task: Task, cfg: TrainConfig, prompt_cfg: PromptConfig, base: Base,
                 data_dir: str | Path | None) -> dict[str, Any]:
    """What defines a training run: a checkpoint is resumed only by a run with the same identity. Settings
    that do not change what a step computes (steps, eval_every, patience) may differ on resume."""
    is_prompt = cfg.method == "prompt"
    data = data_version(task, data_dir)
    if data_dir is not None:  # the files' content, not where they are: a retried pod gets a new temp directory
        data.pop("source")
    return {
        "task": task.name, "method": cfg.method, "base_fingerprint": base.fingerprint,
        "data": data,
        "prompt_length": prompt_cfg.length if is_prompt else None, "init": prompt_cfg.init if is_prompt else None,
        "seed": cfg.seed, "optimizer": cfg.optimizer(),
        **{k: getattr(cfg, k) for k in ("batch_size", "grad_accumulation", "max_source_length", "max_target_length",
                                        "taskless", "target_sentinel")},
    }


def sharded_score(model: Any, encoding: Encoding, task: Task, examples: list[Example],
                  eval_cfg: EvalConfig) -> dict[str, Any]:
    """The task's score on `examples`, each rank predicting its share and every rank scoring all the
    predictions (gathered in order): the same result, hence the same best checkpoint, on every rank.

    Under FSDP every rank predicts every example instead: a sharded model's forward is a collective, so the
    ranks must run the same generate calls in step.
    """
    mine = examples if fsdp_enabled(model) else distributed.shard(examples)
    predictions = predict(model, encoding, task, mine, eval_cfg.mode, eval_cfg.batch_size)
    if mine is not examples:
        predictions = distributed.unshard(predictions)
    return score(task, predictions, examples)


def fsdp_enabled(model: Any) -> bool:
    """A module of the model is sharded by FSDP (`--fsdp`, or FSDP1 wrapping), whose forward gathers weights
    from every rank."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, FSDPModule | FullyShardedDataParallel) for m in model.modules())


def last_checkpoint(checkpoint_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from, as rank 0 sees it: every rank resumes from the same one."""
    last = get_last_checkpoint(str(checkpoint_dir)) if resume and checkpoint_dir.is_dir() else None
    last = distributed.broadcast(last)
    if last:
        log.info("resuming from %s", last)
    return last


def remove_checkpoints(checkpoint_dir: Path, checkpoint_root: Path | None) -> None:
    """Delete a finished run's checkpoints (and `checkpoint_root` if that leaves it empty), on rank 0 once
    every rank is done with them: rank 0 copies the TensorBoard events out of them, and another rank may still
    be reading a checkpoint."""
    distributed.barrier()
    if distributed.is_main():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if checkpoint_root is not None:
            with contextlib.suppress(OSError):
                checkpoint_root.rmdir()  # unless another run's checkpoints are still in it
    distributed.barrier()


def run_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_checkpoint_dir(root: Path, identity: dict[str, Any]) -> Path:
    """`root/<run key>`, recording the identity there. Checkpoints of any other run in `root` are left alone
    (never resumed, never deleted), with a one-line note saying what differs."""
    directory = root / run_key(identity)
    if not (directory / RUN_FILE).is_file() and root.is_dir():
        others = sorted((d for d in root.iterdir() if (d / RUN_FILE).is_file()), key=lambda d: d.stat().st_mtime)
        if others:
            why = identity_difference(json.loads((others[-1] / RUN_FILE).read_text(encoding="utf-8")), identity)
            log.warning("note: %s holds checkpoints of another run (%s); not resuming them, starting fresh in %s",
                        root, why, directory)
        elif any(root.glob("checkpoint-*")):
            log.warning("note: %s holds checkpoints without a run record (an older softprompt); not resuming "
                        "them, starting fresh in %s", root, directory)
    if distributed.is_main():  # rank 0 records the run; the Trainer makes the directory on every rank it needs
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / RUN_FILE, identity)
    return directory


def identity_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`seed 42 -> 43, optimizer.lr 0.3 -> 0.1`: the settings that differ between two run identities."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    changed = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(changed) or "a different run key"


def best_step(trainer: Trainer) -> int:
    """The step whose weights training ends with: the best checkpoint's, or the last step without one."""
    best = trainer.state.best_model_checkpoint
    return int(best.rsplit("-", 1)[1]) if best else trainer.state.global_step


def final_metrics(trainer: ScoringTrainer, score_fn: Any) -> dict[str, Any]:
    """The validation result of the weights training ends with: the best checkpoint's, which the Trainer has
    loaded back and already scored at that step (not scored a second time: a generate pass over the whole
    validation split), or a fresh score when no evaluation matches (e.g. a resumed run)."""
    return trainer.results_by_step.get(best_step(trainer)) or score_fn(trainer.model)


def validation_curve(trainer: Trainer) -> list[dict[str, Any]]:
    """The validation score at every evaluation (from the Trainer's log history, so a resumed run has the
    evaluations before the interruption too): [{"step": 15, "score": 50.0, "accuracy": 50.0}, ...]."""
    prefix = "eval_"
    return [{"step": h["step"], **{k.removeprefix(prefix): v for k, v in h.items() if k.startswith(prefix)
                                   and not k.endswith(("_runtime", "_per_second"))}}
            for h in trainer.state.log_history if f"{prefix}{SCORE}" in h]


def close_tensorboard(trainer: Trainer) -> None:
    """Flush and close the Trainer's TensorBoard writer, so the event files are complete before they are copied
    into the output (an evaluation after training would otherwise reopen a writer that is never flushed)."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.close()
            callback.tb_writer = None


def training_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The train step's Metrics: final and best training loss, best step and validation score, speed, size."""
    losses = [row["loss"] for row in meta.get("loss_curve") or []]
    validation = (meta.get("metrics") or {}).get("validation") or {}
    main = validation.get("main_metric", SCORE)
    return {"final_loss": losses[-1] if losses else None, "best_loss": min(losses) if losses else None,
            "best_step": meta.get("best_step"), f"best_validation_{main}": validation.get(main),
            "steps_per_second": meta.get("steps_per_second"),
            "trainable_parameters": meta.get("trainable_parameters")}


def save_full_model(model: Any, base: Base, output: Path, meta: dict[str, Any], logs: Path | None = None) -> None:
    """A tuned model as a normal transformers checkpoint (usable as --model), with softprompt.json."""
    save_checkpoint(model, base.tokenizer, output, META_FILE, meta, logs)


def save_checkpoint(model: Any, tokenizer: Any, output: Path, meta_file: str, meta: dict[str, Any],
                    logs: Path | None = None) -> None:
    """Weights, config and tokenizer, the run's record as `meta_file` and its TensorBoard `logs`, in one atomic
    rename (a tuned model here, an LM-adapted base in softprompt.lm_adapt)."""
    with atomic_dir(output) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / meta_file, meta)
        copy_logs(logs, tmp)


def final_loss_drop(meta: dict[str, Any]) -> float:
    """First logged loss minus the last: > 0 means training lowered the loss."""
    curve = meta.get("loss_curve") or []
    if len(curve) < 2:
        return math.nan
    return curve[0]["loss"] - curve[-1]["loss"]
