"""Prompt interpretation (paper, section 7): the nearest vocabulary tokens of every prompt position.

For each of the P prompt vectors, the k tokens of the frozen model's input embedding table with the highest
cosine similarity, and whether a class label is among them. A neighbour counts as a class label when its
text (stripped of SentencePiece's "▁" and whitespace, case-folded) equals a label string, or equals the
first token of a label that several tokens spell (e.g. "▁not" for "not_entailment"); one-character tokens
never count, so a byte-level vocabulary does not match every label on its first letter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, write_json


def nearest_tokens(prompt: torch.Tensor, embeddings: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """P x k token ids and cosine similarities (on the CPU), most similar first. The similarities are computed in
    float32 on the embedding table's device, where the prompt is moved."""
    if k < 1 or k > embeddings.shape[0]:
        raise SoftpromptError(f"--k must be between 1 and the vocabulary size {embeddings.shape[0]}, got {k}")
    sims = torch.nn.functional.normalize(prompt.to(embeddings.device).float(), dim=-1) @ torch.nn.functional.normalize(
        embeddings.float(), dim=-1).T
    values, ids = sims.topk(k, dim=-1)
    return ids.cpu(), values.cpu()


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """What a token reads as: the decoded string, or the raw piece when decoding gives nothing."""
    text = tokenizer.decode([token_id])
    return text if text.strip() else str(tokenizer.convert_ids_to_tokens(token_id))


def _norm(text: str) -> str:
    return text.replace("▁", " ").strip().casefold()


def label_keys(tokenizer: PreTrainedTokenizerBase, labels: Sequence[str]) -> dict[str, str]:
    """Normalised neighbour text -> the label it stands for (whole label, or first token of a long label)."""
    keys: dict[str, str] = {}
    for label in labels:
        keys[_norm(label)] = label
        ids = tokenizer(label, add_special_tokens=False).input_ids
        if len(ids) > 1:
            first = _norm(token_text(tokenizer, ids[0]))
            if len(first) > 1:
                keys.setdefault(first, label)
    return {k: v for k, v in keys.items() if len(k) > 1}


def interpret(prompt: torch.Tensor, embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
              labels: Sequence[str] = (), k: int = 5) -> dict[str, Any]:
    """Neighbours of every prompt position and the count of positions with a class label among them."""
    vocab = min(len(tokenizer), embeddings.shape[0])  # T5 pads its embedding table past the vocabulary
    ids, sims = nearest_tokens(prompt, embeddings[:vocab], k)
    keys = label_keys(tokenizer, labels)
    positions = []
    for pos in range(prompt.shape[0]):
        neighbours = [{"id": int(i), "token": str(tokenizer.convert_ids_to_tokens(int(i))),
                       "text": token_text(tokenizer, int(i)), "cosine": round(float(s), 4)}
                      for i, s in zip(ids[pos], sims[pos])]
        found = sorted({keys[_norm(n["text"])] for n in neighbours if _norm(n["text"]) in keys})
        positions.append({"position": pos, "neighbors": neighbours, "labels": found})
    return {"k": k, "labels": list(labels), "prompt_length": prompt.shape[0],
            "positions_with_label": sum(bool(p["labels"]) for p in positions), "positions": positions}


def markdown_table(result: dict[str, Any], title: str) -> str:
    k = result["k"]
    lines = [f"# Nearest neighbours: {title}", "",
             f"{result['positions_with_label']} of {result['prompt_length']} prompt positions have a class label "
             f"({', '.join(result['labels']) or 'none given'}) among their top-{k} neighbours.", "",
             "| position | " + " | ".join(f"#{i + 1}" for i in range(k)) + " | class label |",
             "|---:|" + "---|" * k + "---|"]
    for p in result["positions"]:
        cells = [f"`{_escape(n['text'])}` ({n['cosine']:.2f})" for n in p["neighbors"]]
        lines.append(f"| {p['position']} | " + " | ".join(cells) + f" | {', '.join(p['labels'])} |")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    """Keep table cells on one line and their pipes literal."""
    return text.replace("|", "\\|").replace("`", "'").replace("\n", "\\n").replace("\r", "\\r")


def run_neighbors(prompt_dir: str | Path, output: str | Path, model: str | None = None, k: int = 5,
                  labels: Sequence[str] | None = None, device: str | None = None,
                  dtype: str | None = None) -> dict[str, Any]:
    """Write neighbors.json and neighbors.md for a trained prompt into the directory `output`; the embedding table
    stays where `softprompt.device.choose_placement(device, dtype)` puts the base, which neighbors.json records."""
    from softprompt.device import choose_placement
    from softprompt.ensemble import read_prompt_vectors
    from softprompt.models import load_base
    from softprompt.prompt import read_meta
    from softprompt.tasks import get_task

    meta = read_meta(prompt_dir)
    base = load_base(model or meta["base_model"], placement=choose_placement(device, dtype))
    vectors, meta = read_prompt_vectors(base, prompt_dir)
    if labels is None:
        task = get_task(meta["task"]) if meta.get("task") else None
        labels = list(task.label_names or ()) if task else []
    embeddings = base.model.get_input_embeddings().weight.detach()
    result = interpret(vectors, embeddings, base.tokenizer, labels, k)
    result = {"prompt": str(prompt_dir), "task": meta.get("task"), "base_model": base.name,
              **base.placement.to_json(), **result}
    with atomic_dir(output) as tmp:
        write_json(tmp / "neighbors.json", result)
        (tmp / "neighbors.md").write_text(markdown_table(result, f"{prompt_dir} ({meta.get('task')})"),
                                          encoding="utf-8")
    return result
