"""Evaluation: generate the label text (what the paper reports) or rank every label string.

The same functions score the validation split during training and run `softprompt evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from softprompt import metrics as metric_fns
from softprompt.device import choose_placement, model_device
from softprompt.errors import SoftpromptError
from softprompt.io import write_json, write_jsonl
from softprompt.models import sentinel_id
from softprompt.plots import write_confusion
from softprompt.tasks.base import SCORE, Example, Task


@dataclass
class Encoding:
    """How text becomes token ids for one model: lengths, the design instruction, the target sentinel."""

    tokenizer: PreTrainedTokenizerBase
    max_source_length: int  # the lengths of a trained prompt: trained_encoding reads them (params.yaml `train`)
    max_target_length: int
    target_sentinel: bool = False  # "span corruption + sentinel": targets start with <extra_id_0>
    instruction: str = ""  # prompt design baseline: a discrete text instruction before the input
    demonstrations: Sequence[Example] = ()  # prompt design with --shots K: solved examples before the input

    def source_ids(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if self.demonstrations:
            shots = " ".join(f"{d.inputs} {ANSWER} {d.targets}" for d in self.demonstrations)
            texts = [f"{shots} {t} {ANSWER}" for t in texts]
        if self.instruction:
            texts = [f"{self.instruction} {t}" for t in texts]
        side = self.tokenizer.truncation_side
        # With demonstrations a long source loses its start, never the input being answered.
        self.tokenizer.truncation_side = "left" if self.demonstrations else side
        try:
            return self.tokenizer(list(texts), max_length=self.max_source_length, truncation=True, padding=True,
                                  return_tensors="pt")
        finally:
            self.tokenizer.truncation_side = side

    def target_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, max_length=self.max_target_length, truncation=True).input_ids
        if self.target_sentinel:
            ids = [sentinel_id(self.tokenizer), *ids]
        return ids


ANSWER = "answer:"  # prompt design with shots: "<inputs> answer: <targets>" per demonstration


def trained_encoding(tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any]) -> Encoding:
    """The encoding a prompt or tuned model was trained with (its softprompt.json `train` settings); what
    the record lacks comes from params.yaml `train`."""
    from softprompt.config import load_params

    defaults = load_params()["train"]
    cfg = {**defaults, **(meta.get("train") or {})}
    return Encoding(tokenizer, int(cfg["max_source_length"]), int(cfg["max_target_length"]),
                    bool(cfg["target_sentinel"]))


def read_model_meta(model: str) -> dict[str, Any]:
    """softprompt.json of a model-tuned checkpoint directory (`train --method model`); {} for any other model."""
    import json

    from softprompt.prompt import META_FILE

    path = Path(model) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); restore it or retrain") from e


def pick_demonstrations(examples: Sequence[Example], shots: int, seed: int) -> list[Example]:
    """`shots` labeled training examples, the same ones for a given seed (prompt design's few-shot context)."""
    import random

    labeled = [e for e in examples if e.targets != "<unk>"]
    if shots > len(labeled):
        raise SoftpromptError(f"--shots {shots}: the train split has only {len(labeled)} labeled examples")
    return random.Random(seed).sample(labeled, shots)


def postprocess(text: str) -> str:
    """T5's decoding postprocess: the decoded string, stripped (sentinels are special tokens, so gone)."""
    return text.strip()


@torch.no_grad()
def generate_predictions(model: Any, encoding: Encoding, examples: Sequence[Example], batch_size: int,
                         max_new_tokens: int, progress: bool = False) -> list[str]:
    """Greedy-decode each example's output text."""
    model.eval()
    tokenizer = encoding.tokenizer
    device = model_device(model)
    out: list[str] = []
    extra = 1 if encoding.target_sentinel else 0
    for start in tqdm(range(0, len(examples), batch_size), desc="generate", disable=not progress, leave=False):
        batch = encoding.source_ids([e.inputs for e in examples[start:start + batch_size]])
        generated = model.generate(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device),
                                   max_new_tokens=max_new_tokens + extra, do_sample=False, num_beams=1)
        out.extend(postprocess(t) for t in tokenizer.batch_decode(generated.cpu(), skip_special_tokens=True))
    return out


def label_targets(encoding: Encoding, labels: Sequence[str]) -> torch.Tensor:
    """L x T label token ids (target form, with EOS), padded with -100."""
    label_ids = [encoding.target_ids(label) for label in labels]
    targets = torch.full((len(labels), max(len(ids) for ids in label_ids)), -100, dtype=torch.long)
    for i, ids in enumerate(label_ids):
        targets[i, :len(ids)] = torch.tensor(ids)
    return targets


def sequence_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's label tokens (positions holding -100 do not count)."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (labels != -100)).sum(-1)


@torch.no_grad()
def label_log_likelihoods(model: Any, encoding: Encoding, examples: Sequence[Example],
                          labels: Sequence[str], batch_size: int, progress: bool = False) -> torch.Tensor:
    """N x L tensor: the summed log-probability of each label string (with EOS) given each input."""
    model.eval()
    pad = encoding.tokenizer.pad_token_id
    targets = label_targets(encoding, labels)
    scores = []
    device = model_device(model)
    per_batch = max(1, batch_size // len(labels))
    for start in tqdm(range(0, len(examples), per_batch), desc="rank", disable=not progress, leave=False):
        chunk = examples[start:start + per_batch]
        enc = encoding.source_ids([e.inputs for e in chunk])
        # Every example is paired with every label: rows are (example, label) in example-major order.
        input_ids = enc["input_ids"].repeat_interleave(len(labels), dim=0)
        attention = enc["attention_mask"].repeat_interleave(len(labels), dim=0)
        lab = targets.repeat(len(chunk), 1)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       labels=lab.masked_fill(lab == -100, pad).to(device)).logits
        scores.append(sequence_log_prob(logits, lab.to(device)).view(len(chunk), len(labels)).cpu())
    return torch.cat(scores) if scores else torch.zeros(0, len(labels))


def rank_predictions(model: Any, encoding: Encoding, examples: Sequence[Example], labels: Sequence[str],
                     batch_size: int, progress: bool = False) -> list[str]:
    """Rank classification: the most likely label string for each example."""
    scores = label_log_likelihoods(model, encoding, examples, labels, batch_size, progress)
    return [labels[i] for i in scores.argmax(dim=-1).tolist()]


def predict(model: Any, encoding: Encoding, task: Task, examples: Sequence[Example], mode: str,
            batch_size: int, progress: bool = False) -> list[str]:
    if mode == "rank":
        if not task.is_classification:
            raise SoftpromptError(f"{task.name}: rank classification needs label strings; use --mode generate")
        return rank_predictions(model, encoding, examples, task.label_names, batch_size, progress)
    return generate_predictions(model, encoding, examples, batch_size, max_new_tokens(task, encoding), progress)


def max_new_tokens(task: Task, encoding: Encoding) -> int:
    """Tokens to generate: the task's budget, but never fewer than its longest label needs (a byte-level
    tokenizer spells "not_entailment" in 15 tokens), so a right answer is never cut off."""
    longest = max((len(encoding.target_ids(label)) for label in task.label_names or ()), default=0)
    return max(task.max_target_length, longest)


def score(task: Task, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
    """The task's official metrics and their mean `score`, plus a confusion matrix for classification tasks."""
    labeled = [(p, e) for p, e in zip(predictions, examples) if e.targets != "<unk>"]
    if not labeled:
        raise SoftpromptError(f"{task.name}: the split has no labels to score; evaluate a labeled split")
    preds, exs = [p for p, _ in labeled], [e for _, e in labeled]
    result: dict[str, Any] = dict(task.metrics(preds, exs))
    result["main_metric"] = SCORE  # the mean of the paper's metrics: what selection and promotion compare
    result["num_examples"] = len(exs)
    if task.is_classification:
        result["confusion_matrix"] = metric_fns.confusion(preds, [e.targets for e in exs], task.label_names)
    return result


def evaluate_examples(model: Any, encoding: Encoding, task: Task, examples: Sequence[Example], mode: str,
                      batch_size: int, progress: bool = False) -> tuple[dict[str, Any], list[str]]:
    predictions = predict(model, encoding, task, examples, mode, batch_size, progress)
    return score(task, predictions, examples), predictions


def predictions_path(metrics_path: str | Path) -> Path:
    """Per-example predictions are written beside the metrics file: metrics.json -> metrics.predictions.jsonl."""
    p = Path(metrics_path)
    return p.with_name(p.name.removesuffix(".json") + ".predictions.jsonl")


def write_results(metrics_path: str | Path, result: dict[str, Any], task: Task, examples: Sequence[Example],
                  predictions: Sequence[str]) -> tuple[Path, Path]:
    """The metrics JSON, the per-example predictions (JSON Lines) beside it and, for classification tasks,
    the confusion data `dvc plots` reads (NAME.confusion.json)."""
    rows = [{**e.to_json(), "prediction": p, "correct": p == e.targets} for e, p in zip(examples, predictions)]
    pred_path = write_jsonl(predictions_path(metrics_path), rows)
    write_confusion(metrics_path, task, examples, predictions)
    return write_json(metrics_path, result), pred_path


def run_evaluation(
    task_name: str,
    output: str | Path,
    prompt: str | Path | None = None,
    model: str | None = None,
    data: str | Path | None = None,
    mode: str = "generate",
    split: str = "validation",
    batch_size: int = 32,
    method: str = "prompt",
    limit: int | None = None,
    taskless: bool | None = None,
    progress: bool = True,
    shots: int = 0,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Evaluate on one split and write metrics JSON plus per-example predictions beside it.

    method=prompt: `model` (default: the prompt's recorded base) + `prompt`; method=model: a tuned
    checkpoint given as `model`; method=design: the frozen `model` with the task's text instruction, zero-shot
    or with `shots` training examples (picked by `seed`) in front of the input. A prompt or tuned checkpoint
    is evaluated with the settings it was trained with (taskless, lengths, target sentinel). The model runs
    where `softprompt.device.choose_placement(device, dtype)` puts it; the metrics JSON records that
    device and dtype.
    """
    from softprompt.models import load_base
    from softprompt.prompt import load_prompt, read_meta
    from softprompt.tasks import get_task, load_examples

    if shots and method != "design":
        raise SoftpromptError(f"--shots applies to --method design only, not --method {method}")
    if shots < 0:
        raise SoftpromptError(f"--shots must be >= 0, got {shots}")
    placement = choose_placement(device, dtype)
    meta: dict[str, Any] = {}
    if method == "prompt":
        if prompt is None:
            raise SoftpromptError("--prompt DIR is required with --method prompt (or use --method design/model)")
        meta = read_meta(prompt)
        model = model or meta["base_model"]
    elif model is None:
        raise SoftpromptError(f"--model is required with --method {method}")
    elif method == "model":
        meta = read_model_meta(model)
    if taskless is None:
        taskless = bool(meta.get("train", {}).get("taskless", False))
    task = get_task(task_name, taskless=taskless)
    examples = load_examples(task, data, split, limit=limit)
    if not examples:
        raise SoftpromptError(f"{task.name}: the {split} split is empty")
    base = load_base(model, placement=placement)
    net: Any = base.model
    encoding = trained_encoding(base.tokenizer, meta)
    if method == "prompt":
        net, meta = load_prompt(base, prompt)
    elif method == "design":
        if not task.design_prompt:
            raise SoftpromptError(f"{task.name}: no design prompt is defined for this task")
        encoding.instruction = task.design_prompt
        if shots:
            encoding.demonstrations = pick_demonstrations(load_examples(task, data, "train"), shots, seed)
    result, predictions = evaluate_examples(net, encoding, task, examples, mode, batch_size, progress)
    result = {"task": task.name, "split": split, "mode": mode, "method": method, "base_model": base.name,
              "prompt": str(prompt) if prompt else None, "taskless": taskless,
              "max_source_length": encoding.max_source_length, "target_sentinel": encoding.target_sentinel,
              **base.placement.to_json(),
              **({"shots": shots, "shots_seed": seed, "shot_ids": [d.idx for d in encoding.demonstrations]}
                 if method == "design" else {}),
              **result}
    write_results(output, result, task, examples, predictions)
    return result
