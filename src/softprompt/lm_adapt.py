"""LM adaptation: continue a T5 model's pretraining (the paper's third setting), or pretrain one from scratch.

Two objectives, following T5's preprocessors (t5/data/preprocessors.py):
- prefix-lm (`prefix_lm`): a segment of at most `max_source_length - 1` tokens of one document is split at a
  uniformly random point in [1, n-1]; the input is the prefix, the target the rest; both end with EOS.
- span-corruption (`span_corruption`): `random_spans_noise_mask` marks ~15% of a segment as noise in
  spans of mean length 3; each noise span becomes one sentinel (<extra_id_0>, <extra_id_1>, ... in order)
  in the input, and the target lists the sentinels each followed by the tokens they replaced. The segment
  length is chosen (`random_spans_helper`) so the input is exactly `max_source_length` tokens with EOS.

Training reuses the prompt-training machinery (Trainer, Adafactor, the same TrainingArguments), so
checkpoint/resume, bf16, multi-GPU, progress bars and seeding behave the same. The output is a normal
transformers checkpoint plus `lm_adapt_metrics.json`; with a cache root it is stored under a content
address (`lm_adapt_key`) and reused instead of retrained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from softprompt import __version__, distributed, xla
from softprompt.config import LMAdaptConfig
from softprompt.corpus import Corpus, document_segments, open_corpus, segments
from softprompt.errors import SoftpromptError
from softprompt.io import copy_dir
from softprompt.models import Base, load_base, sentinel_id
from softprompt.training import (
    TENSORBOARD_DIR,
    TokenMeanLossTrainer,
    adafactor,
    close_tensorboard,
    last_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    training_arguments,
)

log = logging.getLogger(__name__)


class Mixture(Protocol):
    """Labelled examples to interleave with the objective's (softprompt.pretrain.TaskMixture)."""

    def identity(self) -> dict[str, Any]: ...

    def dataset(self, base: Any, tokenizer: PreTrainedTokenizerBase, cfg: LMAdaptConfig) -> Any: ...


METRICS_FILE = "lm_adapt_metrics.json"
Row = dict[str, list[int]]


# ---------------------------------------------------------------------------------------------- config


# ------------------------------------------------------------------------------------------ objectives

def prefix_lm_example(tokens: np.ndarray, rng: np.random.Generator, eos_id: int, max_target_length: int) -> Row:
    """T5's prefix_lm on one segment: input = tokens[:k], target = tokens[k:], k uniform in [1, n-1]; EOS on both.

    A target longer than `max_target_length` is cut, keeping its EOS (seqio's append_eos_after_trim).
    """
    n = len(tokens)
    if n < 2:
        raise ValueError("prefix-lm needs segments of at least 2 tokens")
    k = int(rng.integers(1, n))  # the prefix length: the input keeps >= 1 token, the target >= 1
    targets = tokens[k:k + max_target_length - 1]
    return {"input_ids": [*tokens[:k].tolist(), eos_id], "labels": [*targets.tolist(), eos_id]}


def span_corruption_lengths(inputs_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[
        int, int]:
    """T5's random_spans_helper: the segment length whose corrupted input is `inputs_length` tokens (with EOS),
    and the resulting target length (with EOS)."""

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        # the input keeps the non-noise tokens plus a sentinel per span; the target the noise plus a sentinel
        # per span; each ends with EOS
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, lengths(tokens_length)[1]


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split `num_items` into `num_segments` non-empty parts at random: their lengths, summing to num_items."""
    first_in_segment = np.arange(num_items - 1) < num_segments - 1
    rng.shuffle(first_in_segment)
    segment_id = np.cumsum(np.concatenate([[False], first_in_segment]))
    return np.bincount(segment_id, minlength=num_segments)


def num_noise_spans(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a segment, as in T5's random_spans_noise_mask."""
    length = max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    return num_noise, max(int(round(num_noise / mean_noise_span_length)), 1)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's noise mask: round(length * density) noise tokens in round(noise / mean span) spans.

    Spans alternate non-noise, noise, non-noise, ..., starting with non-noise; all such masks are equally likely.
    """
    num_noise, num_spans = num_noise_spans(length, noise_density, mean_noise_span_length)
    padded = max(length, 2)  # T5 avoids degenerate 1-token segments by masking a length-2 one
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = random_segmentation(padded - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    start_indicator = np.zeros(padded, dtype=np.int64)
    start_indicator[span_starts] = 1
    return (np.cumsum(start_indicator) % 2 == 1)[:length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, sentinels: list[int]) -> np.ndarray:
    """Replace each run of masked tokens with the next sentinel (sentinels[0] first) and drop the rest of the run."""
    prev_noise = np.concatenate([[False], noise_mask[:-1]])
    first_noise = noise_mask & ~prev_noise
    span_index = np.cumsum(first_noise) - 1
    sentinel_ids = np.asarray(sentinels, dtype=np.int64)[np.clip(span_index, 0, len(sentinels) - 1)]
    out = np.where(first_noise, sentinel_ids, tokens)
    return out[~(noise_mask & prev_noise)]


def span_corruption_example(tokens: np.ndarray, rng: np.random.Generator, sentinels: list[int], eos_id: int,
                            noise_density: float, mean_noise_span_length: float) -> Row:
    """T5's span_corruption on one segment: noise spans -> sentinels in the input; the target lists them."""
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_noise_span_length, rng)
    inputs = noise_span_to_unique_sentinel(tokens, mask, sentinels)
    targets = noise_span_to_unique_sentinel(tokens, ~mask, sentinels)
    return {"input_ids": [*inputs.tolist(), eos_id], "labels": [*targets.tolist(), eos_id]}


@dataclass
class Objective:
    """An objective bound to a tokenizer: the segment length to pack to and the example builder."""

    name: str
    segment_length: int
    target_length: int
    build: Callable[[np.ndarray, np.random.Generator], Row]
    joins_documents: bool = True  # segments cut from the joined stream (span corruption), or per document


def make_objective(cfg: LMAdaptConfig, tokenizer: PreTrainedTokenizerBase) -> Objective:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SoftpromptError("the tokenizer has no EOS token; LM adaptation needs a T5-style tokenizer")
    if cfg.objective == "prefix-lm":
        segment = cfg.max_source_length - 1  # T5's split_tokens_to_inputs_length: room for EOS
        return Objective(cfg.objective, segment, min(cfg.max_target_length, segment),
                         lambda t, rng: prefix_lm_example(t, rng, eos, cfg.max_target_length),
                         joins_documents=False)
    segment, targets = span_corruption_lengths(cfg.max_source_length, cfg.noise_density, cfg.mean_noise_span_length)
    if targets > cfg.max_target_length:
        raise SoftpromptError(f"max_target_length: span corruption of {cfg.max_source_length}-token inputs makes "
                              f"{targets}-token targets; raise max_target_length to >= {targets}")
    spans = num_noise_spans(segment, cfg.noise_density, cfg.mean_noise_span_length)[1]
    sentinels = [sentinel_id(tokenizer, i) for i in range(spans)]  # raises if the tokenizer has too few
    return Objective(cfg.objective, segment, targets,
                     lambda t, rng: span_corruption_example(t, rng, sentinels, eos, cfg.noise_density,
                                                            cfg.mean_noise_span_length))


# --------------------------------------------------------------------------------------------- dataset

def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Randomness of one example: fixed by (seed, epoch, position), so runs and resumes are reproducible."""
    return np.random.default_rng([seed, epoch, index])


def shuffled(items: Iterable[Row], size: int, rng: np.random.Generator) -> Iterator[Row]:
    """Shuffle a stream through a buffer of `size` items (what datasets' IterableDataset.shuffle does)."""
    buffer: list[Row] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)  # type: ignore[arg-type]
    yield from buffer


class LMDataset(torch.utils.data.IterableDataset):
    """Objective examples built from a corpus's packed segments, streamed; a new epoch reshuffles and redraws."""

    def __init__(self, corpus: Corpus, tokenizer: PreTrainedTokenizerBase, objective: Objective, seed: int,
                 skip: int = 0, shuffle_buffer: int = 0):
        self.corpus, self.tokenizer, self.objective = corpus, tokenizer, objective
        self.seed, self.skip, self.shuffle_buffer = seed, skip, shuffle_buffer
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) every epoch
        self.epoch = epoch

    def examples(self, epoch: int) -> Iterator[Row]:
        cut = segments if self.objective.joins_documents else document_segments
        segs = cut(self.corpus, self.tokenizer, self.objective.segment_length, min_length=2)
        for i, seg in enumerate(segs):
            if i >= self.skip:
                yield self.objective.build(seg, example_rng(self.seed, epoch, i))

    def __iter__(self) -> Iterator[Row]:
        rows = self.examples(self.epoch)
        if self.shuffle_buffer > 1:
            rows = shuffled(rows, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, 2**31]))
        for row in rows:
            yield {**row, "attention_mask": [1] * len(row["input_ids"])}


def validation_rows(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, objective: Objective, seed: int,
                    count: int) -> list[Row]:
    """The first `count` examples of a corpus, built with fixed randomness (the same every evaluation)."""
    rows = []
    for row in LMDataset(corpus, tokenizer, objective, seed):
        rows.append(row)
        if len(rows) == count:
            break
    return rows


# --------------------------------------------------------------------------------------------- caching

def lm_adapt_key(base: str, objective: str, steps: int, **recipe: Any) -> str:
    """Content address of an LM-adapted checkpoint: `<objective>-<steps>-<hash>`.

    `base` is the base model's fingerprint (or name); `recipe` any further settings that change the
    weights (corpus identity, lengths, batch size, lr, seed, ...). Equal inputs give equal keys.
    """
    payload = json.dumps({"base": base, "objective": objective, "steps": int(steps), **recipe}, sort_keys=True,
                         default=str)
    return f"{objective}-{int(steps)}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def read_metrics(directory: str | Path) -> dict[str, Any] | None:
    """The metrics of a finished LM-adaptation output, or None if `directory` is not one."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file() or not (Path(directory) / "config.json").is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def find_cached(key: str, *candidates: Path | None) -> Path | None:
    """The first candidate directory holding a finished checkpoint with this key."""
    for directory in candidates:
        if directory is not None and (read_metrics(directory) or {}).get("key") == key:
            return directory
    return None


# -------------------------------------------------------------------------------------------- training

class TokenCountingTrainer(TokenMeanLossTrainer):
    """A Trainer that counts the non-padding input and target tokens it trains on (for tokens/s); its loss is
    the mean over each step's target tokens (`TokenMeanLossTrainer`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tokens_seen = torch.zeros((), dtype=torch.long)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        # Summed as a tensor on the batch's device: no host sync per step.
        count = inputs["attention_mask"].sum() + (inputs["labels"] != -100).sum()
        self.tokens_seen = self.tokens_seen.to(count.device) + count
        return super().training_step(model, inputs, num_items_in_batch)

    def total_tokens(self) -> int:
        return int(self.accelerator.reduce(self.tokens_seen.to(self.args.device), reduction="sum").item())


@xla.on_every_chip  # with torch_xla: one process per TPU chip
def lm_adapt(
    model_spec: str,
    corpus_spec: str,
    output: str | Path | None = None,
    cfg: LMAdaptConfig | None = None,
    cache_root: str | Path | None = None,
    validation_corpus: str | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    keep_checkpoints: bool = False,
    force: bool = False,
    progress: bool = True,
    mixture: Mixture | None = None,
) -> dict[str, Any]:
    """Continue pretraining `model_spec` on `corpus_spec`; write the checkpoint to `output` (or the cache).

    With `mixture`, labelled task examples are interleaved with the objective's (T5's multi-task mixture).

    With `cache_root`, the checkpoint lives at `cache_root/<key>`; an existing one with the same key (same
    base weights, objective, steps, corpus and recipe) is reused, as is a finished `output` with that key,
    unless `force`. Returns the metrics (with `output` and `reused`).
    """
    cfg = cfg or LMAdaptConfig()
    if output is None and cache_root is None:
        raise SoftpromptError("pass --output DIR or --cache-root DIR (or both)")
    corpus = open_corpus(corpus_spec, cfg.text_field)
    val_corpus = open_corpus(validation_corpus, cfg.text_field, split="validation") if validation_corpus else None
    base = load_base(model_spec)
    key = lm_adapt_key(base.fingerprint, cfg.objective, cfg.steps, corpus=corpus.identity(),
                       validation=val_corpus.identity() if val_corpus else None,
                       **({"mixture": mixture.identity()} if mixture else {}), **cfg.recipe())
    cached_dir = Path(cache_root) / key if cache_root is not None else None
    target = Path(output) if output is not None else cached_dir
    assert target is not None
    if not force and (hit := find_cached(key, cached_dir, target)) is not None:
        return _reuse(hit, target)

    store = cached_dir or target
    ckpt = Path(checkpoint_dir) if checkpoint_dir else store.with_name(store.name + ".checkpoints") / key
    trainer, meta = _train(base, corpus, val_corpus, cfg, ckpt, resume, progress, mixture)
    meta = {"key": key, **meta, "corpus": {"spec": corpus_spec, **corpus.identity()},
            "validation_corpus": validation_corpus, "mixture": mixture.identity() if mixture else None}
    if trainer.is_world_process_zero():  # one writer under multi-GPU and on TPU chips
        save_checkpoint(xla.to_host(trainer.model), base.tokenizer, store, METRICS_FILE, meta,
                        ckpt / TENSORBOARD_DIR)
        if store != target:
            copy_dir(store, target)
    if not keep_checkpoints:
        # OUTPUT.checkpoints goes too if no other key's checkpoints are in it
        remove_checkpoints(ckpt, ckpt.parent if checkpoint_dir is None else None)
    return {**meta, "output": str(target), "reused": False}


def _reuse(hit: Path, target: Path) -> dict[str, Any]:
    log.info("reusing the LM-adapted checkpoint %s (same key)", hit)
    if hit != target and distributed.is_main():  # one copier when several processes run
        copy_dir(hit, target)
    return {**(read_metrics(hit) or {}), "output": str(target), "reused": True}


def _train(base: Base, corpus: Corpus, val_corpus: Corpus | None, cfg: LMAdaptConfig, ckpt: Path, resume: bool,
           progress: bool, mixture: Mixture | None = None) -> tuple[TokenCountingTrainer, dict[str, Any]]:
    tokenizer, model = base.tokenizer, base.model
    objective = make_objective(cfg, tokenizer)
    val_rows = validation_rows(val_corpus or corpus, tokenizer, objective, cfg.seed, cfg.eval_examples)
    if not val_rows:
        raise SoftpromptError(f"{(val_corpus or corpus).spec}: no text to build validation examples from")
    train_set = LMDataset(corpus, tokenizer, objective, cfg.seed, skip=0 if val_corpus else len(val_rows),
                          shuffle_buffer=cfg.shuffle_buffer)
    if next(iter(train_set), None) is None:
        raise SoftpromptError(f"{corpus.spec}: no training examples left after holding out {len(val_rows)} "
                              "for validation; add text, lower --eval-examples or pass --validation-corpus")
    if mixture is not None:
        train_set = mixture.dataset(train_set, tokenizer, cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    train_cfg = cfg.train_config()
    args = training_arguments(train_cfg, ckpt, has_eval=False, main_metric="", progress=progress,
                              eval_strategy="steps", prediction_loss_only=True,
                              per_device_eval_batch_size=cfg.eval_batch_size, warmup_steps=cfg.warmup_steps,
                              lr_scheduler_type="constant_with_warmup" if cfg.warmup_steps else "constant",
                              # under torchrun each rank reads the stream and keeps its share of every global
                              # batch (accelerate's IterableDatasetShard); dispatching would have rank 0 join
                              # batches the collator padded to different lengths, which fails
                              accelerator_config={"dispatch_batches": False},
                              # the loss before training, scored inside train(): an evaluate() call before
                              # train() marks the model prepared, and accelerate then never wraps it in DDP,
                              # so under torchrun each rank would train on its own share, unsynchronised
                              eval_on_start=True)
    trainer = TokenCountingTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=val_rows,
        # static shapes on XLA: the objective's target length (span corruption's is fixed), a mixture's rows up
        # to max_target_length
        data_collator=xla.collator(tokenizer, cfg.max_source_length,
                                   cfg.max_target_length if mixture else objective.target_length),
        optimizer_cls_and_kwargs=adafactor(train_cfg),
    )
    last = last_checkpoint(ckpt, resume)
    started = time.time()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.time() - started
    after = trainer.evaluate()["eval_loss"]
    close_tensorboard(trainer)
    tokens = trainer.total_tokens()
    history = trainer.state.log_history
    # every evaluation by step (a resumed run evaluates again at its start step; the later score wins); the
    # first is step 0's, before any training (a resumed run has it from its checkpoint's history)
    evaluations = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    before = evaluations[min(evaluations)]
    return trainer, {
        "softprompt_version": __version__,
        "base_model": base.name,
        "base_fingerprint": base.fingerprint,
        "objective": cfg.objective,
        "config": asdict(cfg),
        "segment_length": objective.segment_length,
        "target_length": objective.target_length,
        "steps_trained": trainer.state.global_step,
        "resumed_from": last,
        "validation_examples": len(val_rows),
        "validation_loss_before": before,
        "validation_loss_after": after,
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
        "validation_loss_curve": [{"step": step, "loss": loss} for step, loss in sorted(evaluations.items())],
        "train_seconds": round(seconds, 2),
        "tokens_trained": tokens,
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "placement": xla.placement(trainer.model),
    }


def lm_adapt_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The lm-adapt step's Metrics: validation loss before and after, final training loss, speed."""
    losses = [row["loss"] for row in meta.get("loss_curve") or []]
    return {"validation_loss_before": meta.get("validation_loss_before"),
            "validation_loss_after": meta.get("validation_loss_after"),
            "final_loss": losses[-1] if losses else None, "steps": meta.get("steps_trained"),
            "tokens_per_second": meta.get("tokens_per_second")}
