"""Nearest-neighbour interpretation on a toy embedding table."""

from __future__ import annotations

import json

import torch

from softprompt.interpret import interpret, nearest_tokens, run_neighbors


class ToyTokenizer:
    """Five whole-word tokens, enough for `interpret`."""

    vocab = ["▁yes", "▁no", "▁cat", "▁dog", "▁maybe"]

    def __len__(self) -> int:
        return len(self.vocab)

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids).replace("▁", " ").strip()

    def convert_ids_to_tokens(self, i):
        return self.vocab[i]

    def __call__(self, text, add_special_tokens=False):
        class Out:
            input_ids = [self.vocab.index("▁" + w) for w in text.split()]
        return Out()


EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.7, 0.7]])


def test_nearest_tokens_cosine_order():
    ids, sims = nearest_tokens(torch.tensor([[2.0, 0.1], [0.0, -3.0]]), EMB, k=2)
    assert ids[0].tolist() == [0, 4] and ids[1, 0].item() == 3  # (yes, cat tie at cosine 0 for the 2nd)
    assert sims[0, 0].item() > sims[0, 1].item()
    assert abs(sims[1, 0].item() - 1.0) < 1e-6


def test_interpret_counts_label_positions():
    prompt = torch.tensor([[1.0, 0.05], [0.0, -1.0], [0.05, 1.0]])
    result = interpret(prompt, EMB, ToyTokenizer(), labels=["yes", "no"], k=2)
    assert [p["neighbors"][0]["text"] for p in result["positions"]] == ["yes", "dog", "no"]
    assert [p["labels"] for p in result["positions"]] == [["yes"], [], ["no"]]
    assert result["positions_with_label"] == 2


def test_run_neighbors_on_tiny_prompt(tmp_path):
    from softprompt.config import PromptConfig
    from softprompt.models import load_base
    from softprompt.prompt import attach_prompt, save_prompt

    base = load_base("tiny")
    peft = attach_prompt(base, PromptConfig(length=3, init="class-label"), ("True", "False"), seed=0)
    # class-label init puts the mean byte embedding of each label at positions 0 and 1
    save_prompt(peft, tmp_path / "p", {"task": "boolq", "base_model": "tiny", "base_fingerprint": base.fingerprint,
                                       "prompt_length": 3})
    result = run_neighbors(tmp_path / "p", tmp_path / "nb", k=5)
    saved = json.loads((tmp_path / "nb" / "neighbors.json").read_text())
    assert saved["labels"] == ["False", "True"] and len(saved["positions"]) == 3
    assert all(len(p["neighbors"]) == 5 for p in saved["positions"])
    assert result["positions_with_label"] == sum(bool(p["labels"]) for p in saved["positions"])
    assert "| position |" in (tmp_path / "nb" / "neighbors.md").read_text()
