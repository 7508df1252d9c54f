"""One frozen model, one soft prompt per task, and batches whose rows belong to different tasks.

`PromptSet` is an immutable snapshot of what is served (each task's prompt and version, all prompts stacked in
one `PromptEnsemble`). A batch reads the snapshot once, so every row of it is answered by the version its
response names; a promotion builds a new snapshot and swaps the reference, which is atomic.

The base sits where `softprompt.device.choose_placement` put it (`Base.placement`); the stacked prompts live on
that device in the weights' dtype, the ids, masks and labels of a batch go there for the pass, and the outputs
come back to the CPU to be decoded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.ensemble import PromptEnsemble, prompt_tensor
from softprompt.errors import SoftpromptError
from softprompt.evaluation import (
    Encoding,
    label_targets,
    max_new_tokens,
    postprocess,
    sequence_log_prob,
    trained_encoding,
)
from softprompt.models import Base
from softprompt.prompt import check_base, read_meta
from softprompt.tasks.base import Task


@dataclass(frozen=True)
class ServedPrompt:
    """A task's production prompt, ready to serve: its vectors and how its inputs are encoded."""

    task: Task  # with the prompt's own taskless setting
    version: str  # the registry version, e.g. "v3"
    vectors: torch.Tensor  # P x d
    encoding: Encoding
    meta: dict[str, Any] = field(repr=False)

    @property
    def budget(self) -> int:
        """Tokens to generate: the task's budget (as evaluation), plus the sentinel when trained with one."""
        return max_new_tokens(self.task, self.encoding) + (1 if self.encoding.target_sentinel else 0)

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * self.vectors.element_size()


def load_served_prompt(base: Base, task_name: str, prompt_dir: str | Path, version: str) -> ServedPrompt:
    """Read a prompt directory for `task_name`, refusing one trained on another base (`BaseMismatch`) or for
    another task."""
    from softprompt.tasks import get_task

    meta = read_meta(prompt_dir)
    check_base(meta, base, f"{task_name} {version}", "retrain it on the served base")
    if meta.get("task") not in (None, task_name):
        raise SoftpromptError(f"{task_name} {version}: the prompt was trained for task {meta['task']!r}")
    task = get_task(task_name, taskless=bool((meta.get("train") or {}).get("taskless", False)))
    return ServedPrompt(task, version, prompt_tensor(base, prompt_dir, meta), trained_encoding(base.tokenizer, meta),
                        meta)


@dataclass
class Row:
    """One instance of a request: its task, its raw fields (checked), and the mode it asks for."""

    task: str
    fields: dict[str, Any]
    mode: str = "generate"


class PromptSet:
    """An immutable snapshot of the served prompts, stacked for one batched pass."""

    def __init__(self, base: Base, prompts: dict[str, ServedPrompt], lock: threading.Lock | None = None) -> None:
        self.base = base
        # Rust (fast) tokenizers refuse concurrent use ("Already borrowed"): the request handlers count tokens
        # while the batcher encodes, so both take this lock, shared by every snapshot of one server.
        self.lock = lock or threading.Lock()
        self.prompts = dict(prompts)
        self.tasks = sorted(self.prompts)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.ensemble = PromptEnsemble(base.model, [self.prompts[t].vectors for t in self.tasks]) if prompts else None

    def with_prompt(self, served: ServedPrompt) -> PromptSet:
        return PromptSet(self.base, {**self.prompts, served.task.name: served}, self.lock)

    def versions(self) -> dict[str, str]:
        return {t: self.prompts[t].version for t in self.tasks}

    def source_text(self, row: Row) -> str:
        examples = self.prompts[row.task].task.format(row.fields)
        return examples[0].inputs

    def count_tokens(self, row: Row) -> int:
        """Input tokens of a row as its prompt's tokenizer sees them (EOS included), before truncation."""
        text = self.source_text(row)
        with self.lock:
            return len(self.base.tokenizer(text).input_ids)

    def run(self, rows: list[Row]) -> list[dict[str, Any]]:
        """Answer every row: one generate pass per generation budget, one forward pass for the rows that rank."""
        out: list[dict[str, Any]] = [{} for _ in rows]
        for mode, fn in (("generate", self._generate), ("rank", self._rank)):
            for chosen in self._groups(rows, mode):
                for i, answer in zip(chosen, fn([rows[i] for i in chosen])):
                    out[i] = answer
        return out

    def _groups(self, rows: list[Row], mode: str) -> list[list[int]]:
        """Indexes of the rows in `mode`, one group per pass: generate rows are grouped by generation budget, so
        a short-label task never decodes to a QA task's budget; rank rows all go in one pass."""
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            if r.mode == mode:
                groups.setdefault(self.prompts[r.task].budget if mode == "generate" else 0, []).append(i)
        return list(groups.values())

    def _encode(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids (each row with its prompt's encoding), their mask, and each row's prompt index."""
        texts = [self.source_text(r) for r in rows]
        with self.lock:
            encoded = [self.prompts[r.task].encoding.source_ids([t])["input_ids"][0] for r, t in zip(rows, texts)]
        pad = self.base.tokenizer.pad_token_id
        ids = torch.full((len(rows), max(len(e) for e in encoded)), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, :len(e)], mask[i, :len(e)] = e, 1
        return ids, mask, torch.tensor([self.index[r.task] for r in rows])

    @torch.no_grad()
    def _generate(self, rows: list[Row]) -> list[dict[str, Any]]:
        ids, mask, index = self._encode(rows)
        budgets = [self.prompts[r.task].budget for r in rows]
        out = self.ensemble.generate(ids, mask, prompt_index=index, max_new_tokens=max(budgets), do_sample=False,
                                     num_beams=1).cpu()
        # A row's own budget: what it would have generated alone (greedy decoding is per row).
        with self.lock:
            texts = [postprocess(self.base.tokenizer.decode(seq[:1 + b], skip_special_tokens=True))
                     for seq, b in zip(out, budgets)]
        return [self._answer(r, text) for r, text in zip(rows, texts)]

    @torch.no_grad()
    def _rank(self, rows: list[Row]) -> list[dict[str, Any]]:
        ids, mask, index = self._encode(rows)
        labels = [self.prompts[r.task].task.label_names for r in rows]
        with self.lock:
            targets = [label_targets(self.prompts[r.task].encoding, names) for r, names in zip(rows, labels)]
        width = max(t.shape[1] for t in targets)
        lab = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-100) for t in targets])
        counts = torch.tensor([len(n) for n in labels])
        pad = self.base.tokenizer.pad_token_id
        logits = self.ensemble(ids.repeat_interleave(counts, 0), mask.repeat_interleave(counts, 0),
                               labels=lab.masked_fill(lab == -100, pad), prompt_index=index.repeat_interleave(counts)
                               ).logits
        scores = sequence_log_prob(logits, lab.to(logits.device)).cpu().split(counts.tolist())
        answers = []
        for r, names, s in zip(rows, labels, scores):
            answer = self._answer(r, names[int(s.argmax())])
            answer["scores"] = {n: float(v) for n, v in zip(names, s.tolist())}
            answers.append(answer)
        return answers

    def _answer(self, row: Row, text: str) -> dict[str, Any]:
        served = self.prompts[row.task]
        names = served.task.label_names
        return {"task": row.task, "label": text,
                "class": names.index(text) if names and text in names else None,
                "version": served.version, "base_fingerprint": self.base.fingerprint}
