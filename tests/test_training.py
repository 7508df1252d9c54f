import json

import pytest
import torch
from conftest import write_jsonl
from transformers import TrainerCallback

from softprompt.config import PromptConfig, TrainConfig
from softprompt.errors import SoftpromptError
from softprompt.models import load_base
from softprompt.prompt import load_prompt, prompt_vectors
from softprompt.training import final_loss_drop, train


def small_cfg(**kw) -> TrainConfig:
    values = dict(steps=12, batch_size=8, eval_every=6, max_source_length=64, seed=0)
    values.update(kw)
    return TrainConfig(**values)


def test_training_lowers_loss_and_leaves_base_weights_untouched(rte_dir, tmp_path):
    before = {k: v.clone() for k, v in load_base("tiny").model.state_dict().items()}
    meta = train("rte", "tiny", rte_dir, tmp_path / "p", PromptConfig(length=8), small_cfg(steps=60, eval_every=30),
                 progress=False)
    # Only 512 prompt numbers train against a random frozen model: a >20% drop is a clear signal.
    assert final_loss_drop(meta) > 0.2 * meta["loss_curve"][0]["loss"]
    assert meta["steps_trained"] == 60 and meta["trainable_parameters"] == 8 * 64
    assert meta["metrics"]["validation"]["num_examples"] == 8
    assert set(meta["data"]["files"]) == {"train.jsonl", "val.jsonl"}
    base = load_base("tiny")
    model, _ = load_prompt(base, tmp_path / "p")
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights must be bit-identical"
    assert not (tmp_path / "p.checkpoints").exists()  # cleaned up after success


def test_same_seed_same_prompt(rte_train_only, tmp_path):
    cfg = small_cfg(steps=6)
    train("rte", "tiny", rte_train_only, tmp_path / "a", PromptConfig(length=3), cfg, progress=False)
    train("rte", "tiny", rte_train_only, tmp_path / "b", PromptConfig(length=3), cfg, progress=False)
    train("rte", "tiny", rte_train_only, tmp_path / "c", PromptConfig(length=3), small_cfg(steps=6, seed=1),
          progress=False)
    a, b, c = (prompt_vectors(load_prompt(load_base("tiny"), tmp_path / n)[0]) for n in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)


class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 7:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_prompt(rte_train_only, tmp_path):
    cfg = small_cfg(steps=10, eval_every=5)
    train("rte", "tiny", rte_train_only, tmp_path / "full", PromptConfig(length=3), cfg, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train("rte", "tiny", rte_train_only, tmp_path / "resumed", PromptConfig(length=3), cfg, progress=False,
              callbacks=[Interrupt()])
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    assert (tmp_path / "resumed.checkpoints" / "checkpoint-5").is_dir()
    meta = train("rte", "tiny", rte_train_only, tmp_path / "resumed", PromptConfig(length=3), cfg, progress=False)
    assert meta["steps_trained"] == 10
    full = prompt_vectors(load_prompt(load_base("tiny"), tmp_path / "full")[0])
    resumed = prompt_vectors(load_prompt(load_base("tiny"), tmp_path / "resumed")[0])
    assert torch.allclose(full, resumed, atol=1e-6)


def test_model_tuning_baseline_writes_a_loadable_checkpoint(rte_train_only, tmp_path):
    meta = train("rte", "tiny", rte_train_only, tmp_path / "m", PromptConfig(length=3),
                 small_cfg(steps=4, method="model"), progress=False)
    assert meta["method"] == "model" and meta["train"]["lr"] == 0.001
    assert meta["trainable_parameters"] == sum(p.numel() for p in load_base("tiny").model.parameters())
    tuned = load_base(str(tmp_path / "m"))
    assert tuned.fingerprint != load_base("tiny").fingerprint


def test_bad_training_inputs_fail_cleanly(tmp_path, rte_dir):
    with pytest.raises(SoftpromptError, match="no such data directory"):
        train("rte", "tiny", tmp_path / "nope", tmp_path / "out", PromptConfig(length=2), small_cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoftpromptError, match="missing the train split of rte"):
        train("rte", "tiny", tmp_path / "empty", tmp_path / "out", PromptConfig(length=2), small_cfg())
    bad = tmp_path / "bad"
    write_jsonl(bad / "train.jsonl", [{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0}])
    with pytest.raises(SoftpromptError, match=r"train.jsonl: row 1: rte: unknown label 'maybe'"):
        train("rte", "tiny", bad, tmp_path / "out", PromptConfig(length=2), small_cfg())
    (bad / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n{oops\n')
    with pytest.raises(SoftpromptError, match=r"train.jsonl:2: invalid JSON"):
        train("rte", "tiny", bad, tmp_path / "out", PromptConfig(length=2), small_cfg())
    write_jsonl(bad / "train.jsonl", [{"premise": "p", "label": "entailment", "idx": 0}])
    with pytest.raises(SoftpromptError, match="row 1 has no field 'hypothesis'"):
        train("rte", "tiny", bad, tmp_path / "out", PromptConfig(length=2), small_cfg())
    with pytest.raises(SoftpromptError, match="unknown task"):
        train("nosuchtask", "tiny", rte_dir, tmp_path / "out", PromptConfig(length=2), small_cfg())
    assert not (tmp_path / "out").exists()


def test_failed_retrain_keeps_the_previous_prompt(rte_train_only, tmp_path):
    train("rte", "tiny", rte_train_only, tmp_path / "p", PromptConfig(length=2), small_cfg(steps=2), progress=False)
    before = json.loads((tmp_path / "p" / "softprompt.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        train("rte", "tiny", rte_train_only, tmp_path / "p", PromptConfig(length=2), small_cfg(steps=10),
              progress=False, callbacks=[Interrupt()])
    assert json.loads((tmp_path / "p" / "softprompt.json").read_text()) == before
