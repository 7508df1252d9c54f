"""Prompt ensembling: per-row prompts in one batch equal PEFT's one-prompt runs; majority vote with ties."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.config import PromptConfig
from softprompt.ensemble import PromptEnsemble, majority_vote, run_ensemble
from softprompt.errors import SoftpromptError
from softprompt.evaluation import Encoding, generate_predictions, label_log_likelihoods
from softprompt.models import load_base
from softprompt.prompt import attach_prompt, prompt_vectors, save_prompt
from softprompt.tasks.base import Example


def test_majority_vote_ties_go_to_earliest_prompt():
    assert majority_vote(["a", "b", "b"]) == "b"
    assert majority_vote(["b", "a", "a", "b"]) == "b"
    assert majority_vote(["x", "y", "z"]) == "x"
    assert majority_vote(["y", "x", "x", "y", "z"]) == "y"


def make_prompts(tmp_path, n=2, length=4):
    dirs = []
    for seed in range(n):
        base = load_base("tiny")
        peft = attach_prompt(base, PromptConfig(length=length, init="random"), None, seed=seed)
        meta = {"task": "rte", "base_model": "tiny", "base_fingerprint": base.fingerprint, "prompt_length": length,
                "train": {"max_source_length": 128, "max_target_length": 16}}
        dirs.append(save_prompt(peft, tmp_path / f"p{seed}", meta))
    return dirs


EXAMPLES = [Example(i, f"rte hypothesis: h{i}. premise: p{i} words.", "entailment") for i in range(3)]


def test_batched_prompts_match_peft_one_prompt_runs(tmp_path):
    from softprompt.prompt import load_prompt

    dirs = make_prompts(tmp_path)
    base = load_base("tiny")
    enc = Encoding(base.tokenizer, 128, 16)
    singles, scores, vectors = [], [], []
    for d in dirs:
        peft, _ = load_prompt(load_base("tiny"), d)
        vectors.append(prompt_vectors(peft))
        singles.append(generate_predictions(peft, enc, EXAMPLES, batch_size=3, max_new_tokens=5))
        scores.append(label_log_likelihoods(peft, enc, EXAMPLES, ["entailment", "not_entailment"], batch_size=4))
    ens = PromptEnsemble(base.model, torch.stack(vectors))
    batch = enc.source_ids([e.inputs for e in EXAMPLES])
    out = ens.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=5, do_sample=False, num_beams=1)
    texts = [t.strip() for t in base.tokenizer.batch_decode(out, skip_special_tokens=True)]
    assert out.shape[0] == 2 * len(EXAMPLES)  # one pass, N*B rows
    assert texts[:3] == singles[0] and texts[3:] == singles[1]
    from softprompt.ensemble import ensemble_rank

    ranked = ensemble_rank(ens, enc, EXAMPLES, ["entailment", "not_entailment"], batch_size=8)
    labels = ["entailment", "not_entailment"]
    assert ranked == [[labels[i] for i in s.argmax(-1).tolist()] for s in scores]


def test_run_ensemble_writes_table_and_votes(tmp_path):
    dirs = make_prompts(tmp_path, n=3)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": "entailment", "idx": i} for i in range(4)]
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_ensemble("rte", dirs, tmp_path / "out", data=data, mode="rank", batch_size=8, progress=False)
    assert [p["prompt"] for p in summary["prompts"]] == [str(d) for d in dirs]
    assert summary["average"]["accuracy"] == pytest.approx(sum(p["accuracy"] for p in summary["prompts"]) / 3)
    assert summary["best"]["accuracy"] == max(p["accuracy"] for p in summary["prompts"])
    preds = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["prediction"] == majority_vote(p["votes"]) and len(p["votes"]) == 3 for p in preds)
    correct = sum(p["prediction"] == "entailment" for p in preds)
    assert summary["ensemble"]["accuracy"] == pytest.approx(100 * correct / 4)
    assert "**Ensemble**" in (tmp_path / "out" / "ensemble.md").read_text()
    assert summary["main_metric"] == "score"  # the best prompt is chosen on the task's score
    assert summary["best"]["score"] == max(p["score"] for p in summary["prompts"])


def test_ensemble_generates_as_many_tokens_as_evaluate(tmp_path):
    """Each prompt's vote equals what `evaluate` generates for that prompt alone: both allow max_new_tokens
    (the task's budget, or its longest label if longer: 15 byte tokens for not_entailment), not the task's raw 8."""
    from softprompt.evaluation import run_evaluation

    dirs = make_prompts(tmp_path, n=2)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": "entailment", "idx": i} for i in range(3)]
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_ensemble("rte", dirs, tmp_path / "out", data=data, mode="generate", batch_size=8, progress=False)
    votes = [json.loads(x)["votes"] for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for i, d in enumerate(dirs):
        run_evaluation("rte", tmp_path / f"e{i}.json", prompt=d, data=data, batch_size=8, progress=False)
        alone = [json.loads(x)["prediction"] for x in (tmp_path / f"e{i}.predictions.jsonl").read_text().splitlines()]
        assert [v[i] for v in votes] == alone
    assert max(len(v) for row in votes for v in row) > 8  # the random prompts use the longer budget


def test_ensemble_refuses_one_prompt(tmp_path):
    with pytest.raises(SoftpromptError, match="at least 2 prompts"):
        run_ensemble("rte", make_prompts(tmp_path, n=1), tmp_path / "out")
