"""LM adaptation: the T5 objectives on known inputs, corpus reading and packing, content-addressed reuse,
a short real run on the tiny model that lowers the validation loss, and the span-corruption + sentinel
setting of prompt training."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, needs_shared, rte_rows, write_jsonl
from transformers import ByT5Tokenizer

from softprompt.corpus import open_corpus, pack
from softprompt.errors import SoftpromptError
from softprompt.evaluation import Encoding, generate_predictions
from softprompt.lm_adapt import (
    METRICS_FILE,
    LMAdaptConfig,
    LMDataset,
    lm_adapt,
    lm_adapt_key,
    make_objective,
    noise_span_to_unique_sentinel,
    prefix_lm_example,
    random_spans_noise_mask,
    span_corruption_example,
    span_corruption_lengths,
)
from softprompt.models import load_base, sentinel_id

EOS = 1
REPO = Path(__file__).resolve().parents[1]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def small_cfg(**overrides) -> LMAdaptConfig:
    values = dict(objective="prefix-lm", steps=200, batch_size=8, grad_accumulation=1, lr=0.01, warmup_steps=0,
                  max_source_length=48, max_target_length=48, eval_every=100, eval_examples=16, eval_batch_size=16,
                  shuffle_buffer=64, seed=0)
    values.update(overrides)
    return LMAdaptConfig(**values)


def write_corpus(path: Path, lines: int = 600, seed: int = 0) -> Path:
    """English-like sentences from a small grammar: enough structure for a tiny model to learn quickly."""
    r = random.Random(seed)
    nouns = ["cat", "dog", "bird", "farmer", "teacher", "river", "city", "garden"]
    verbs = ["sees", "likes", "follows", "paints", "visits", "finds"]
    adjectives = ["small", "old", "green", "quiet", "happy"]
    text = []
    for _ in range(lines):
        text.append(f"The {r.choice(adjectives)} {r.choice(nouns)} {r.choice(verbs)} the {r.choice(nouns)} "
                    f"near the {r.choice(nouns)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ prefix LM

def test_prefix_lm_splits_at_a_random_point_with_eos_on_both_sides():
    tokens = np.arange(10, 16)  # 6 tokens
    seen = set()
    for seed in range(200):
        row = prefix_lm_example(tokens, rng(seed), EOS, max_target_length=64)
        k = len(row["input_ids"]) - 1
        assert row["input_ids"] == [*range(10, 10 + k), EOS]
        assert row["labels"] == [*range(10 + k, 16), EOS]
        seen.add(k)
    assert seen == {1, 2, 3, 4, 5}  # uniform over [1, n-1]: both sides always keep a token


def test_prefix_lm_truncates_long_targets_but_keeps_eos():
    tokens = np.arange(100, 120)
    row = prefix_lm_example(tokens, rng(3), EOS, max_target_length=4)
    k = len(row["input_ids"]) - 1
    assert row["labels"] == [*tokens[k:k + 3].tolist(), EOS]
    with pytest.raises(ValueError):
        prefix_lm_example(np.arange(1), rng(), EOS, 8)


def test_prefix_lm_objective_packs_to_source_length_minus_eos():
    objective = make_objective(small_cfg(max_source_length=32, max_target_length=32), ByT5Tokenizer())
    assert objective.segment_length == 31
    row = objective.build(np.arange(200, 231), rng())
    assert len(row["input_ids"]) + len(row["labels"]) == 31 + 2


# ------------------------------------------------------------------------------------- span corruption

def test_span_corruption_lengths_match_t5():
    # T5's random_spans_helper: 512-token inputs come from 568-token segments with 114-token targets.
    assert span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
    assert span_corruption_lengths(626, 0.15, 3.0)[1] <= 140


def test_noise_mask_has_the_t5_density_and_span_count():
    mask = random_spans_noise_mask(100, 0.15, 3.0, rng(1))
    assert mask.shape == (100,) and mask.dtype == bool
    assert mask.sum() == 15
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert starts.sum() == 5  # round(15 / 3) spans
    assert not mask[0] and mask[-1]  # spans alternate starting with non-noise; T5 ends on a noise span
    assert np.array_equal(mask, random_spans_noise_mask(100, 0.15, 3.0, rng(1)))  # seeded
    assert not np.array_equal(mask, random_spans_noise_mask(100, 0.15, 3.0, rng(2)))


def test_noise_mask_on_tiny_segments_still_masks_one_token():
    assert random_spans_noise_mask(2, 0.15, 3.0, rng()).tolist() == [False, True]
    assert random_spans_noise_mask(1, 0.15, 3.0, rng()).tolist() == [False]


def test_noise_span_to_unique_sentinel_on_known_input():
    tokens = np.arange(10, 18)
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    sentinels = [90, 91, 92, 93]
    assert noise_span_to_unique_sentinel(tokens, mask, sentinels).tolist() == [10, 90, 13, 14, 91, 16, 92]
    assert noise_span_to_unique_sentinel(tokens, ~mask, sentinels).tolist() == [90, 11, 12, 91, 15, 92, 17]


def uncorrupt(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int]:
    """Put the target spans back in place of the input sentinels (the inverse of span corruption)."""
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs[:-1]:
        out.extend(spans[t] if t in sentinels else [t])
    return out


def test_span_corruption_numbers_sentinels_in_order_and_appends_eos():
    tok = ByT5Tokenizer()
    sentinels = [sentinel_id(tok, i) for i in range(10)]
    tokens = np.array(tok("The quick brown fox jumps over the lazy dog!", add_special_tokens=False).input_ids)
    row = span_corruption_example(tokens, rng(5), sentinels, tok.eos_token_id, 0.15, 3.0)
    used_in = [t for t in row["input_ids"] if t in sentinels]
    used_out = [t for t in row["labels"] if t in sentinels]
    assert used_in == used_out == sentinels[:len(used_in)] and used_in  # <extra_id_0>, <extra_id_1>, ...
    assert row["labels"][0] == sentinels[0]  # the target starts with the first sentinel
    assert row["input_ids"][-1] == row["labels"][-1] == tok.eos_token_id
    assert uncorrupt(row["input_ids"], row["labels"], sentinels) == tokens.tolist()
    assert sum(t not in sentinels for t in row["labels"][:-1]) == round(len(tokens) * 0.15)


def test_span_corruption_objective_gives_exact_lengths():
    cfg = small_cfg(objective="span-corruption", max_source_length=64, max_target_length=64)
    objective = make_objective(cfg, ByT5Tokenizer())
    segment, targets = span_corruption_lengths(64, 0.15, 3.0)
    assert objective.segment_length == segment
    row = objective.build(np.arange(3, 3 + segment), rng())
    assert len(row["input_ids"]) == 64 and len(row["labels"]) == targets


def test_span_corruption_objective_errors_are_actionable():
    with pytest.raises(SoftpromptError, match="raise max_target_length"):
        make_objective(small_cfg(objective="span-corruption", max_source_length=512, max_target_length=64),
                       ByT5Tokenizer())
    with pytest.raises(SoftpromptError, match="extra_id"):  # ByT5 has 125 sentinels; this needs ~220
        make_objective(small_cfg(objective="span-corruption", max_source_length=4000, max_target_length=4000),
                       ByT5Tokenizer())
    with pytest.raises(SoftpromptError, match="objective"):
        small_cfg(objective="mlm")


@needs_shared
def test_objectives_work_with_the_t5_sentencepiece_tokenizer(tmp_path: Path):
    spiece = SHARED / "models" / "t5-spiece" / "spiece.model"
    if not spiece.is_file():
        pytest.skip("no T5 SentencePiece model in ../shared")
    from transformers import T5Tokenizer

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "spiece.model").symlink_to(spiece)
    tok = T5Tokenizer.from_pretrained(str(tmp_path / "tok"))
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt", lines=100)))
    cfg = small_cfg(objective="span-corruption", max_source_length=64, max_target_length=64)
    rows = list(LMDataset(corpus, tok, make_objective(cfg, tok), seed=0))
    assert len(rows) > 5 and all(len(r["input_ids"]) == 64 for r in rows[:-1])
    assert rows[0]["labels"][0] == 32099 == sentinel_id(tok, 0)  # <extra_id_0> is the top of T5's vocabulary
    assert 32098 in rows[0]["labels"] and rows[0]["input_ids"][-1] == tok.eos_token_id == 1
    prefix = list(LMDataset(corpus, tok, make_objective(small_cfg(), tok), seed=0))
    assert all(r["labels"][-1] == 1 and len(r["input_ids"]) + len(r["labels"]) <= 49 for r in prefix)


# ---------------------------------------------------------------------------------------------- corpus

def test_pack_cuts_the_concatenated_stream_into_fixed_segments():
    arrays = [np.arange(1, 6), np.arange(6, 13), np.arange(13, 15)]
    out = [s.tolist() for s in pack(arrays, 4, min_length=2)]
    assert out == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14]]
    assert [s.tolist() for s in pack([np.arange(5)], 4, min_length=2)] == [[0, 1, 2, 3]]  # 1-token tail dropped


def test_corpus_reads_txt_and_jsonl_files_in_a_directory(tmp_path: Path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    write_jsonl(d / "sub" / "b.jsonl", [{"text": "from jsonl", "id": 1}, {"text": "  "}])
    (d / "notes.csv").write_text("ignored,file\n", encoding="utf-8")
    corpus = open_corpus(str(d))
    assert list(corpus.texts()) == ["first line", "second line", "from jsonl"]
    assert list(corpus.texts()) == ["first line", "second line", "from jsonl"]  # re-iterable
    assert set(corpus.identity()["files"]) == {"a.txt", "b.jsonl"}


def test_corpus_errors_name_the_file_and_the_fix(tmp_path: Path):
    with pytest.raises(SoftpromptError, match="hf:NAME"):
        open_corpus(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoftpromptError, match="no .txt or .jsonl"):
        open_corpus(str(tmp_path / "empty"))
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(SoftpromptError, match="unsupported corpus file"):
        open_corpus(str(tmp_path / "x.csv"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"body": "no text field"}])
    with pytest.raises(SoftpromptError, match=r"bad.jsonl:1: .*--text-field"):
        list(open_corpus(str(bad)).texts())
    assert list(open_corpus(str(bad), text_field="body").texts()) == ["no text field"]
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(SoftpromptError, match=r"broken.jsonl:2: invalid JSON"):
        list(open_corpus(str(tmp_path / "broken.jsonl")).texts())


def test_hf_corpus_streams_with_datasets(tmp_path: Path):
    # A local dataset directory goes through the same datasets.load_dataset(streaming=True) path as C4.
    d = tmp_path / "hfdata"
    write_jsonl(d / "train.jsonl", [{"text": f"document {i}"} for i in range(5)])
    corpus = open_corpus(f"hf:{d}")
    assert list(corpus.texts()) == [f"document {i}" for i in range(5)]
    with pytest.raises(SoftpromptError, match="no string field 'body'"):
        list(open_corpus(f"hf:{d}", text_field="body").texts())


def test_hub_corpus_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = open_corpus("c4")
    assert corpus.dataset == "allenai/c4" and corpus.config == "en"
    with pytest.raises(SoftpromptError, match="offline"):
        next(corpus.texts())


def test_lm_dataset_is_reproducible_and_changes_with_the_epoch(tmp_path: Path):
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt", lines=50)))
    tok = ByT5Tokenizer()
    ds = LMDataset(corpus, tok, make_objective(small_cfg(), tok), seed=1, skip=2, shuffle_buffer=8)
    first, again = list(ds), list(ds)
    assert first == again and len(first) > 10
    assert all(r["attention_mask"] == [1] * len(r["input_ids"]) for r in first)
    ds.set_epoch(1)
    assert list(ds) != first
    unskipped = LMDataset(corpus, tok, make_objective(small_cfg(), tok), seed=1)
    assert len(list(unskipped)) == len(first) + 2


def test_prefix_lm_examples_stay_inside_one_document(tmp_path: Path):
    """T5's prefix_lm cuts one document; only span corruption joins documents (reduce_concat_tokens). Two
    documents of distinct tokens: no prefix-LM example mixes them, and each document's tail is kept."""
    (tmp_path / "two.txt").write_text("a" * 20 + "\n" + "b" * 20 + "\n")
    corpus = open_corpus(str(tmp_path / "two.txt"))
    tok = ByT5Tokenizer()
    a, b = (tok(ch, add_special_tokens=False).input_ids[0] for ch in "ab")
    rows = list(LMDataset(corpus, tok, make_objective(small_cfg(max_source_length=16), tok), seed=0))
    docs = [set(r["input_ids"][:-1] + r["labels"][:-1]) for r in rows]
    assert docs == [{a}, {a}, {b}, {b}]  # 20 tokens each: a 15-token segment and a 5-token tail per document
    assert sum(len(r["input_ids"]) + len(r["labels"]) - 2 for r in rows) == 40
    spans = LMDataset(corpus, tok, make_objective(small_cfg(objective="span-corruption", max_source_length=16,
                                                            max_target_length=16), tok), seed=0)
    assert any({a, b} <= set(r["input_ids"] + r["labels"]) for r in spans)  # the joined stream, as T5


# --------------------------------------------------------------------------------------------- caching

def test_lm_adapt_key_is_a_content_address():
    key = lm_adapt_key("sha256:abc", "prefix-lm", 100, corpus={"files": {"a.txt": "md5:1"}}, lr=0.001)
    assert key.startswith("prefix-lm-100-") and len(key) == len("prefix-lm-100-") + 16
    assert key == lm_adapt_key("sha256:abc", "prefix-lm", 100, lr=0.001, corpus={"files": {"a.txt": "md5:1"}})
    others = [lm_adapt_key("sha256:abd", "prefix-lm", 100, corpus={"files": {"a.txt": "md5:1"}}, lr=0.001),
              lm_adapt_key("sha256:abc", "span-corruption", 100, corpus={"files": {"a.txt": "md5:1"}}, lr=0.001),
              lm_adapt_key("sha256:abc", "prefix-lm", 101, corpus={"files": {"a.txt": "md5:1"}}, lr=0.001),
              lm_adapt_key("sha256:abc", "prefix-lm", 100, corpus={"files": {"a.txt": "md5:2"}}, lr=0.001)]
    assert key not in others and len(set(others)) == 4


# ------------------------------------------------------------------------------- end to end (tiny model)

@pytest.mark.slow
def test_lm_adapt_lowers_validation_loss_reloads_and_is_reused(tmp_path: Path, rte_dir: Path):
    corpus = write_corpus(tmp_path / "corpus" / "text.txt")
    out, cache = tmp_path / "lm", tmp_path / "cache"
    meta = lm_adapt("tiny", str(corpus.parent), out, small_cfg(), cache_root=cache, progress=False)

    assert meta["reused"] is False and meta["steps_trained"] == 200
    assert meta["validation_loss_after"] < meta["validation_loss_before"] - 1.0
    curve = [p["loss"] for p in meta["loss_curve"]]
    assert len(curve) >= 5 and curve[-1] < curve[0]
    assert meta["tokens_per_second"] > 0 and meta["tokens_trained"] > 200 * 8 * 10
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", METRICS_FILE):
        assert (out / name).is_file(), name
    assert (cache / meta["key"] / "model.safetensors").is_file()
    assert not (tmp_path / "cache" / f"{meta['key']}.checkpoints").exists()
    written = json.loads((out / METRICS_FILE).read_text())
    assert written["key"] == meta["key"] and written["validation_loss_after"] == meta["validation_loss_after"]

    # The checkpoint reloads as a base model, with the trained weights.
    base = load_base(str(out))
    assert base.fingerprint != load_base("tiny").fingerprint
    assert base.tokenizer.convert_tokens_to_ids("<extra_id_0>") == sentinel_id(ByT5Tokenizer())

    # Same base, objective, steps, corpus and recipe: reused from the cache, not retrained.
    mtime = (cache / meta["key"] / "model.safetensors").stat().st_mtime_ns
    again = lm_adapt("tiny", str(corpus.parent), None, small_cfg(), cache_root=cache, progress=False)
    assert again["reused"] is True and again["key"] == meta["key"] and again["output"] == str(cache / meta["key"])
    assert (cache / meta["key"] / "model.safetensors").stat().st_mtime_ns == mtime
    copy = lm_adapt("tiny", str(corpus.parent), tmp_path / "copy", small_cfg(), cache_root=cache, progress=False)
    assert copy["reused"] is True and (tmp_path / "copy" / "model.safetensors").is_file()

    # ... and works as the base of prompt training.
    from softprompt.config import PromptConfig, TrainConfig
    from softprompt.training import train

    prompt_meta = train("rte", str(out), rte_dir, tmp_path / "prompt", PromptConfig(length=4, init="random"),
                        TrainConfig(steps=4, batch_size=4, eval_every=4, max_source_length=64), progress=False)
    assert prompt_meta["base_model"] == str(out) and prompt_meta["base_fingerprint"] == base.fingerprint
    assert prompt_meta["steps_trained"] == 4


@pytest.mark.slow
def test_span_corruption_run_resumes_from_a_checkpoint(tmp_path: Path):
    corpus = write_corpus(tmp_path / "text.txt", lines=200)
    ckpt = tmp_path / "ckpt"
    cfg = small_cfg(objective="span-corruption", steps=10, eval_every=10, max_source_length=32,
                    max_target_length=16, eval_examples=4)
    first = lm_adapt("tiny", str(corpus), tmp_path / "a", cfg, checkpoint_dir=ckpt, keep_checkpoints=True,
                     progress=False)
    assert first["steps_trained"] == 10 and (ckpt / "checkpoint-10").is_dir()
    assert first["target_length"] <= 16
    longer = small_cfg(objective="span-corruption", steps=15, eval_every=10, max_source_length=32,
                       max_target_length=16, eval_examples=4)
    second = lm_adapt("tiny", str(corpus), tmp_path / "b", longer, checkpoint_dir=ckpt, progress=False)
    assert second["resumed_from"].endswith("checkpoint-10") and second["steps_trained"] == 15
    assert second["key"] != first["key"] and not ckpt.exists()


def test_lm_adapt_rejects_a_corpus_too_small_to_train_on(tmp_path: Path):
    tiny_text = tmp_path / "t.txt"
    tiny_text.write_text("only a few bytes here\n")
    with pytest.raises(SoftpromptError, match="no training examples left"):
        lm_adapt("tiny", str(tiny_text), tmp_path / "out", small_cfg(eval_examples=4), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_lm_adapt_reports_bad_input_in_one_line(tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "softprompt.cli", "lm-adapt", "--model", "tiny", "--corpus",
                             str(tmp_path / "nope"), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no such corpus file or directory" in result.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- span corruption + sentinel setting

@pytest.mark.slow
def test_target_sentinel_trains_on_sentinel_targets_and_evaluation_strips_it(tmp_path: Path):
    from softprompt.config import PromptConfig, TrainConfig
    from softprompt.tasks import get_task, load_examples
    from softprompt.training import ExampleDataset, train

    data = tmp_path / "RTE"
    rows = [{**r, "label": "entailment"} for r in rte_rows(16)]
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "val.jsonl", rows[:4])
    task = get_task("rte")
    examples = load_examples(task, data, "validation")
    tok = ByT5Tokenizer()
    label_ids = tok("entailment").input_ids

    # Training labels: <extra_id_0> + the label + EOS.
    encoding = Encoding(tok, 64, 64, target_sentinel=True)
    assert ExampleDataset(examples, encoding).rows[0]["labels"] == [sentinel_id(tok), *label_ids]
    assert ExampleDataset(examples, Encoding(tok, 64, 64)).rows[0]["labels"] == label_ids

    train("rte", "tiny", data, tmp_path / "model", PromptConfig(length=4, init="random"),
          TrainConfig(method="model", steps=40, batch_size=8, lr=0.01, eval_every=40, target_sentinel=True,
                      max_source_length=64), progress=False)
    model = load_base(str(tmp_path / "model")).model
    batch = encoding.source_ids([e.inputs for e in examples])
    with torch.no_grad():
        raw = model.generate(**batch, max_new_tokens=16, do_sample=False)
    assert raw[:, 1].tolist() == [sentinel_id(tok)] * len(examples)  # the model emits the sentinel first ...
    predictions = generate_predictions(model, encoding, examples, batch_size=4, max_new_tokens=16)
    assert predictions == ["entailment"] * len(examples)  # ... and evaluation strips it
