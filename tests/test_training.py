import json
import logging

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


@pytest.mark.slow
def test_training_lowers_loss_and_leaves_base_weights_untouched(rte_dir, tmp_path):
    before = {k: v.clone() for k, v in load_base("tiny").model.state_dict().items()}
    meta = train("rte", "tiny", rte_dir, tmp_path / "p", PromptConfig(length=8), small_cfg(steps=60, eval_every=30),
                 progress=False)
    # Only 512 prompt numbers train against a random frozen model: a >20% drop is a clear signal.
    assert final_loss_drop(meta) > 0.2 * meta["loss_curve"][0]["loss"]
    assert meta["steps_trained"] == 60 and meta["trainable_parameters"] == 8 * 64
    assert meta["metrics"]["validation"]["num_examples"] == 8
    assert set(meta["data"]["files"]) == {"train.jsonl", "val.jsonl"}
    assert [row["step"] for row in meta["validation_curve"]] == [30, 60]  # every evaluation, for the curve
    assert meta["validation_curve"][-1]["score"] == meta["validation_curve"][-1]["accuracy"]
    assert meta["best_step"] in (30, 60) and meta["steps_per_second"] > 0
    (logdir,) = (tmp_path / "p" / "runs").iterdir()  # the Trainer's TensorBoard run, moved into the output
    assert any(f.name.startswith("events.out.tfevents.") for f in logdir.iterdir())
    base = load_base("tiny")
    model, _ = load_prompt(base, tmp_path / "p")
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "base weights must be bit-identical"
    assert not (tmp_path / "p.checkpoints").exists()  # cleaned up after success


@pytest.mark.slow
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


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_prompt(rte_train_only, tmp_path):
    cfg = small_cfg(steps=10, eval_every=5)
    train("rte", "tiny", rte_train_only, tmp_path / "full", PromptConfig(length=3), cfg, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train("rte", "tiny", rte_train_only, tmp_path / "resumed", PromptConfig(length=3), cfg, progress=False,
              callbacks=[Interrupt()])
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    (run_dir,) = (tmp_path / "resumed.checkpoints").iterdir()  # one directory per run key
    assert (run_dir / "checkpoint-5").is_dir() and (run_dir / "run.json").is_file()
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


@pytest.mark.slow
def test_another_run_never_resumes_these_checkpoints(rte_train_only, tmp_path, caplog):
    """Checkpoints are keyed by the run (task, method, base, data md5s, prompt length, init, seed, optimizer...):
    a rerun with another seed into the same --output says what differs and starts fresh in its own directory,
    leaving the interrupted run's checkpoints for that run to resume."""
    cfg = small_cfg(steps=10, eval_every=5)
    with pytest.raises(KeyboardInterrupt):
        train("rte", "tiny", rte_train_only, tmp_path / "p", PromptConfig(length=3), cfg, progress=False,
              callbacks=[Interrupt()])
    (interrupted,) = (tmp_path / "p.checkpoints").iterdir()
    caplog.set_level(logging.INFO, logger="softprompt.training")
    meta = train("rte", "tiny", rte_train_only, tmp_path / "p", PromptConfig(length=3), small_cfg(steps=10, seed=1),
                 progress=False)
    notes = [r.getMessage() for r in caplog.records if "another run" in r.getMessage()]
    assert len(notes) == 1 and "seed 0 -> 1" in notes[0] and "starting fresh" in notes[0]
    assert not any(r.getMessage().startswith("resuming from") for r in caplog.records)
    assert meta["run_key"] != interrupted.name and meta["steps_trained"] == 10
    fresh = prompt_vectors(load_prompt(load_base("tiny"), tmp_path / "p")[0])
    train("rte", "tiny", rte_train_only, tmp_path / "ref", PromptConfig(length=3), small_cfg(steps=10, seed=1),
          progress=False)
    assert torch.equal(fresh, prompt_vectors(load_prompt(load_base("tiny"), tmp_path / "ref")[0]))
    assert (interrupted / "checkpoint-5").is_dir()  # the other run's checkpoints are kept, not deleted


WSC_ROW = {"text": "Mitchell asked Tom if he could lend some money.", "idx": 0, "label": True,
           "target": {"span1_index": 2, "span1_text": "Tom", "span2_index": 4, "span2_text": "he"}}


def test_class_label_init_on_a_task_without_labels_falls_back_to_sampled_vocab(tmp_path, caplog):
    write_jsonl(tmp_path / "wsc" / "train.jsonl", [{**WSC_ROW, "idx": i} for i in range(8)])
    caplog.set_level(logging.WARNING, logger="softprompt.training")
    meta = train("wsc", "tiny", tmp_path / "wsc", tmp_path / "p", PromptConfig(length=4, init="class-label"),
                 small_cfg(steps=2), progress=False)
    assert meta["init"] == "sampled-vocab" and meta["steps_trained"] == 2
    (note,) = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert note.startswith("note: wsc has no class labels") and "\n" not in note


def test_selection_uses_the_tasks_score(rte_dir, tmp_path):
    meta = train("rte", "tiny", rte_dir, tmp_path / "p", PromptConfig(length=2), small_cfg(steps=2, eval_every=1),
                 progress=False)
    validation = meta["metrics"]["validation"]
    assert validation["main_metric"] == "score" and validation["score"] == validation["accuracy"]
    assert meta["best_checkpoint"] is not None


def test_evaluating_a_model_tuned_checkpoint_uses_its_training_settings(rte_dir, tmp_path):
    """`train --method model --taskless --target-sentinel` records its settings; `evaluate --method model` reads
    them as it does for a prompt: inputs without the task prefix, the trained source length, the sentinel."""
    from softprompt.evaluation import run_evaluation

    train("rte", "tiny", rte_dir, tmp_path / "m", PromptConfig(length=2),
          small_cfg(steps=1, method="model", taskless=True, target_sentinel=True, max_source_length=40),
          progress=False)
    result = run_evaluation("rte", tmp_path / "eval.json", model=str(tmp_path / "m"), data=rte_dir, method="model",
                            batch_size=8, progress=False)
    assert (result["taskless"], result["max_source_length"], result["target_sentinel"]) == (True, 40, True)
    rows = [json.loads(x) for x in (tmp_path / "eval.predictions.jsonl").read_text().splitlines()]
    assert rows[0]["inputs"].startswith("hypothesis:")  # no "rte " prefix: trained taskless


@pytest.mark.slow
def test_reported_metrics_are_those_of_the_saved_prompt_scored_once(rte_dir, tmp_path, monkeypatch):
    """The final metrics reuse the best checkpoint's evaluation instead of scoring it again, and they are
    exactly what evaluating the saved prompt gives."""
    import softprompt.training as training
    from softprompt.evaluation import run_evaluation

    calls = []
    real = training.predict
    monkeypatch.setattr(training, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    meta = train("rte", "tiny", rte_dir, tmp_path / "p", PromptConfig(length=4), small_cfg(steps=8, eval_every=4),
                 progress=False)
    assert len(calls) == 2  # steps 4 and 8; none after training
    again = run_evaluation("rte", tmp_path / "m.json", prompt=tmp_path / "p", data=rte_dir, mode="generate",
                           progress=False)
    reported = meta["metrics"]["validation"]
    assert reported["accuracy"] == again["accuracy"] and reported["confusion_matrix"] == again["confusion_matrix"]
