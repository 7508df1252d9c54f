"""Prompt ensembling (paper, section 6): N prompts for one task scored in ONE batched pass over the frozen model.

PEFT's prompt-tuning model prepends a single prompt to a whole batch, so `PromptEnsemble` builds the batch
itself: every example is replicated once per prompt and each replica gets its own prompt prepended to its
input embeddings (`inputs_embeds`), then the frozen base model's `generate` / forward runs once. Predictions
are combined by majority vote; a tie goes to the tied answer given by the earliest prompt on the command line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.device import choose_placement, model_device
from softprompt.errors import SoftpromptError
from softprompt.evaluation import (
    Encoding,
    label_targets,
    max_new_tokens,
    postprocess,
    score,
    sequence_log_prob,
    trained_encoding,
)
from softprompt.io import atomic_dir, write_json, write_jsonl
from softprompt.models import Base
from softprompt.tasks.base import SCORE, Example, Task


class PromptEnsemble(torch.nn.Module):
    """A frozen seq2seq model with N soft prompts, each row of a batch under the prompt it names.

    Without `prompt_index`, row `p * B + b` of a batch is example b under prompt p (the ensemble's layout).
    With it, row r is input r under prompt `prompt_index[r]` (the server's mixed-task batches). Prompts of
    different lengths are left-padded to the longest with masked positions: T5's position bias is relative,
    so the padding changes neither the distances between a row's prompt and its tokens nor its outputs.
    The prompts are kept on the model's device in its dtype; the ids, masks and labels passed in are moved there.
    """

    def __init__(self, model: Any, prompts: torch.Tensor | Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        weight = next(model.parameters())
        vectors = list(prompts)
        longest = max(v.shape[0] for v in vectors)
        padded = torch.zeros(len(vectors), longest, vectors[0].shape[1], dtype=weight.dtype, device=weight.device)
        mask = torch.zeros(len(vectors), longest, dtype=torch.long, device=weight.device)
        for i, v in enumerate(vectors):
            padded[i, longest - v.shape[0]:] = v.to(device=weight.device, dtype=weight.dtype)
            mask[i, longest - v.shape[0]:] = 1
        self.register_buffer("prompts", padded)  # N x P x d
        self.register_buffer("prompt_mask", mask)  # N x P

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[0]

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows [prompt ; embeddings of the input] and their attention mask (N*B rows without an index), on
        the prompts' device."""
        device = self.prompts.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if prompt_index is None:
            n, batch = self.num_prompts, input_ids.shape[0]
            input_ids, attention_mask = input_ids.repeat(n, 1), attention_mask.repeat(n, 1)
            prompt_index = torch.arange(n, device=device).repeat_interleave(batch)
        prompt_index = prompt_index.to(device)
        tokens = self.model.get_input_embeddings()(input_ids)
        mask = torch.cat([self.prompt_mask[prompt_index].to(attention_mask.dtype), attention_mask], dim=1)
        return torch.cat([self.prompts[prompt_index], tokens], dim=1), mask

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 prompt_index: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        embeds, mask = self.embed(input_ids, attention_mask, prompt_index)
        return self.model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                prompt_index: torch.Tensor | None = None) -> Any:
        """`labels` has one row per output row (N*B in prompt-major order without an index)."""
        embeds, mask = self.embed(input_ids, attention_mask, prompt_index)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels.to(embeds.device))


def read_prompt_vectors(base: Base, prompt_dir: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """The P x d prompt of a saved prompt directory, refusing one trained on another base model."""
    from softprompt.prompt import check_base, read_meta

    meta = read_meta(prompt_dir)
    check_base(meta, base, f"{prompt_dir}: prompt", "every prompt must share one base model")
    return prompt_tensor(base, prompt_dir, meta), meta


def prompt_tensor(base: Base, prompt_dir: str | Path, meta: dict[str, Any]) -> torch.Tensor:
    """The P x d vectors of a prompt directory whose softprompt.json `meta` was read and checked."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(prompt_dir) / "adapter_model.safetensors"))
    if "prompt_embeddings" not in tensors:
        raise SoftpromptError(f"{prompt_dir}/adapter_model.safetensors: no prompt_embeddings tensor; "
                              "not a prompt-tuning adapter")
    vectors = tensors["prompt_embeddings"].to(torch.float32)
    if tuple(vectors.shape) != (meta["prompt_length"], base.model.config.d_model):
        raise SoftpromptError(f"{prompt_dir}: prompt has shape {tuple(vectors.shape)}, expected "
                              f"({meta['prompt_length']}, {base.model.config.d_model})")
    return vectors


def majority_vote(votes: Sequence[str]) -> str:
    """The most common answer; ties go to the tied answer that appears first (earliest prompt)."""
    counts = Counter(votes)
    best = max(counts.values())
    return next(v for v in votes if counts[v] == best)


@torch.no_grad()
def ensemble_generate(ens: PromptEnsemble, encoding: Encoding, examples: Sequence[Example], batch_size: int,
                      max_new_tokens: int, progress: bool = False) -> list[list[str]]:
    """Per prompt, the greedy-decoded answer to every example: an N x len(examples) list."""
    ens.eval()
    out: list[list[str]] = [[] for _ in range(ens.num_prompts)]
    extra = 1 if encoding.target_sentinel else 0
    for start in tqdm(range(0, len(examples), batch_size), desc="ensemble", disable=not progress, leave=False):
        chunk = examples[start:start + batch_size]
        enc = encoding.source_ids([e.inputs for e in chunk])
        ids = ens.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens + extra,
                           do_sample=False, num_beams=1)
        texts = [postprocess(t) for t in encoding.tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)]
        for p in range(ens.num_prompts):
            out[p].extend(texts[p * len(chunk):(p + 1) * len(chunk)])
    return out


@torch.no_grad()
def ensemble_rank(ens: PromptEnsemble, encoding: Encoding, examples: Sequence[Example], labels: Sequence[str],
                  batch_size: int, progress: bool = False) -> list[list[str]]:
    """Per prompt, the most likely label string for every example (rank classification)."""
    ens.eval()
    pad = encoding.tokenizer.pad_token_id
    targets = label_targets(encoding, labels)
    device = model_device(ens.model)
    out: list[list[str]] = [[] for _ in range(ens.num_prompts)]
    per_batch = max(1, batch_size // len(labels))
    for start in tqdm(range(0, len(examples), per_batch), desc="ensemble", disable=not progress, leave=False):
        chunk = examples[start:start + per_batch]
        enc = encoding.source_ids([e.inputs for e in chunk])
        # rows (example, label) example-major; the ensemble then repeats them prompt-major.
        ids = enc["input_ids"].repeat_interleave(len(labels), dim=0)
        mask = enc["attention_mask"].repeat_interleave(len(labels), dim=0)
        lab = targets.repeat(len(chunk) * ens.num_prompts, 1).to(device)
        logits = ens(ids, mask, labels=lab.masked_fill(lab == -100, pad)).logits
        scores = sequence_log_prob(logits, lab).view(ens.num_prompts, len(chunk), len(labels))
        for p in range(ens.num_prompts):
            out[p].extend(labels[i] for i in scores[p].argmax(-1).tolist())
    return out


def summarize(task: Task, names: Sequence[str], per_prompt: Sequence[dict[str, Any]],
              ensemble: dict[str, Any]) -> dict[str, Any]:
    """Each prompt, the best (by the task's score), the average of each metric, and the ensemble."""
    metric_names = [k for k, v in ensemble.items() if isinstance(v, float)]
    main = SCORE
    best = max(range(len(names)), key=lambda i: per_prompt[i][main])
    average = {m: sum(r[m] for r in per_prompt) / len(per_prompt) for m in metric_names}
    return {
        "task": task.name, "main_metric": main, "metrics": metric_names,
        "prompts": [{"prompt": n, **{m: r[m] for m in metric_names}} for n, r in zip(names, per_prompt)],
        "best": {"prompt": names[best], **{m: per_prompt[best][m] for m in metric_names}},
        "average": average,
        "ensemble": {m: ensemble[m] for m in metric_names},
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The paper's Table 3 layout: one row per prompt, then best, average and ensemble."""
    metric_names = summary["metrics"]
    lines = [f"# Prompt ensemble: {summary['task']}", "",
             "| | " + " | ".join(metric_names) + " |", "|---|" + "---:|" * len(metric_names)]

    def row(label: str, values: dict[str, float]) -> str:
        return f"| {label} | " + " | ".join(f"{values[m]:.1f}" for m in metric_names) + " |"

    for p in summary["prompts"]:
        lines.append(row(f"`{p['prompt']}`", p))
    lines += [row(f"Best (`{summary['best']['prompt']}`)", summary["best"]), row("Average", summary["average"]),
              row(f"**Ensemble** (majority vote of {len(summary['prompts'])})", summary["ensemble"])]
    return "\n".join(lines) + "\n"


def run_ensemble(task_name: str, prompts: Sequence[str | Path], output: str | Path, data: str | Path | None = None,
                 model: str | None = None, split: str = "validation", mode: str = "generate",
                 batch_size: int = 32, limit: int | None = None, progress: bool = True, device: str | None = None,
                 dtype: str | None = None) -> dict[str, Any]:
    """Evaluate N prompts together and write ensemble.json, ensemble.md and predictions.jsonl into `output`; the
    model runs on `softprompt.device.choose_placement(device, dtype)`, which ensemble.json records."""
    from softprompt.models import load_base
    from softprompt.prompt import read_meta
    from softprompt.tasks import get_task, load_examples

    if len(prompts) < 2:
        raise SoftpromptError("an ensemble needs at least 2 prompts; pass --prompt several times")
    metas = [read_meta(p) for p in prompts]
    lengths = {m["prompt_length"] for m in metas}
    if len(lengths) > 1:
        raise SoftpromptError(f"prompts have different lengths {sorted(lengths)}; ensemble prompts of one length")
    taskless = {bool(m.get("train", {}).get("taskless", False)) for m in metas}
    if len(taskless) > 1:
        raise SoftpromptError("some prompts were trained taskless and some with the task prefix; mix one kind")
    base = load_base(model or metas[0]["base_model"], placement=choose_placement(device, dtype))
    vectors = torch.stack([read_prompt_vectors(base, p)[0] for p in prompts])
    task = get_task(task_name, taskless=taskless.pop())
    if mode == "rank" and not task.is_classification:
        raise SoftpromptError(f"{task.name}: rank classification needs label strings; use --mode generate")
    examples = load_examples(task, data, split, limit=limit)
    if not examples:
        raise SoftpromptError(f"{task.name}: the {split} split is empty")
    encoding = trained_encoding(base.tokenizer, metas[0])
    ens = PromptEnsemble(base.model, vectors)
    if mode == "rank":
        votes = ensemble_rank(ens, encoding, examples, task.label_names, batch_size, progress)
    else:
        votes = ensemble_generate(ens, encoding, examples, batch_size, max_new_tokens(task, encoding), progress)
    combined = [majority_vote([v[i] for v in votes]) for i in range(len(examples))]
    names = [str(p) for p in prompts]
    summary = summarize(task, names, [score(task, v, examples) for v in votes], score(task, combined, examples))
    summary.update({"split": split, "mode": mode, "base_model": base.name, "num_examples": len(examples),
                    **base.placement.to_json()})
    rows = [{**e.to_json(), "votes": [v[i] for v in votes], "prediction": combined[i]}
            for i, e in enumerate(examples)]
    with atomic_dir(output) as tmp:
        write_json(tmp / "ensemble.json", summary)
        (tmp / "ensemble.md").write_text(markdown_table(summary), encoding="utf-8")
        write_jsonl(tmp / "predictions.jsonl", rows)
    return summary
