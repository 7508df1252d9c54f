"""Pretraining from scratch (named config + trained SentencePiece vocabulary, multi-task mixture) and the
AG News showcase task (loader, split, validation)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_lm_adapt import write_corpus
from typer.testing import CliRunner

from softprompt.cli import app
from softprompt.corpus import open_corpus
from softprompt.errors import SoftpromptError
from softprompt.lm_adapt import LMAdaptConfig, read_metrics
from softprompt.models import load_base, sentinel_id
from softprompt.pretrain import MixtureDataset, TaskMixture, from_scratch, load_tokenizer, model_shape, train_vocabulary
from softprompt.tasks import get_task, load_examples
from softprompt.tasks.news import split_file
from softprompt.validation import ValidateConfig, validate

TOPICS = {1: "election minister talks nation", 2: "match team coach season", 3: "shares market profit bank",
          4: "software chip internet space"}


def write_ag_news(path: Path, rows: int, seed: int = 0) -> Path:
    """An AG News-layout CSV (class 1-4, title, description; no header) whose words follow the class."""
    r = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i in range(rows):
            cls = i % 4 + 1
            words = TOPICS[cls].split()
            writer.writerow([str(cls), f"Story {i} about {r.choice(words)}", " ".join(r.choice(words, 6)) + "."])
    return path


def write_words(path: Path, lines: int = 300, seed: int = 0) -> Path:
    """Sentences of made-up words from a few hundred syllable pairs: enough distinct text for a vocabulary."""
    r = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "del", "ven", "mor", "tis", "ga", "bu", "fe"]
    words = [a + b for a in syllables for b in syllables]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(" ".join(r.choice(words, 9)) + "." for _ in range(lines)) + "\n", encoding="utf-8")
    return path


def cfg(**overrides) -> LMAdaptConfig:
    values = dict(objective="span-corruption", steps=40, batch_size=8, grad_accumulation=1, lr=0.01, warmup_steps=0,
                  max_source_length=32, max_target_length=32, eval_every=40, eval_examples=8, eval_batch_size=8,
                  shuffle_buffer=0, seed=0)
    return LMAdaptConfig(**{**values, **overrides})


# ------------------------------------------------------------------------------------------- vocabulary

def test_trained_vocabulary_is_a_t5_tokenizer_with_sentinels(tmp_path: Path):
    corpus = open_corpus(str(write_words(tmp_path / "c.txt")))
    out = train_vocabulary(corpus, 120, tmp_path / "vocab", seed=0)
    tok = load_tokenizer(out)
    assert (out / "spiece.model").is_file()
    assert len(tok) == 120 + 100  # the pieces plus <extra_id_0..99>
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)  # T5's layout
    assert sentinel_id(tok, 0) == 219 and sentinel_id(tok, 99) == 120
    text = (tmp_path / "c.txt").read_text().splitlines()[0]
    ids = tok(text).input_ids
    assert ids[-1] == 1 and tok.decode(ids, skip_special_tokens=True) == text and 5 < len(ids) < len(text)
    # The same corpus and seed give the same pieces (the base's cache key depends on it).
    again = load_tokenizer(train_vocabulary(corpus, 120, tmp_path / "vocab2", seed=0))
    assert again.get_vocab() == tok.get_vocab()


def test_vocabulary_errors_name_the_fix(tmp_path: Path):
    corpus = open_corpus(str(write_corpus(tmp_path / "c.txt", lines=20)))
    with pytest.raises(SoftpromptError, match="lower --vocab-size"):
        train_vocabulary(corpus, 5000, tmp_path / "v")
    with pytest.raises(SoftpromptError, match="unknown model config 'huge'.*params.yaml models"):
        model_shape("huge")


# ------------------------------------------------------------------------------------- from scratch

@pytest.mark.slow
def test_from_scratch_builds_the_named_config_and_learns(tmp_path: Path):
    corpus = write_words(tmp_path / "c.txt", lines=400)
    out = tmp_path / "micro"
    meta = from_scratch("micro", str(corpus), out, cfg(), vocab_size=150, progress=False)
    base = load_base(str(out))
    config = base.model.config
    assert {k: getattr(config, k) for k in model_shape("micro")} == model_shape("micro")
    assert config.vocab_size == len(base.tokenizer) == 250 and config.feed_forward_proj == "gated-gelu"
    # T5 1.1: an output layer of its own, not the input embeddings.
    assert base.model.lm_head.weight.data_ptr() != base.model.get_input_embeddings().weight.data_ptr()
    assert not torch.equal(base.model.lm_head.weight, base.model.get_input_embeddings().weight)
    assert meta["validation_loss_after"] < meta["validation_loss_before"] - 0.5
    assert read_metrics(out)["steps_trained"] == 40 and read_metrics(out)["from_scratch"]["config"] == "micro"
    assert not out.with_name("micro.init").exists() and not out.with_name("micro.vocab").exists()
    assert meta["from_scratch"]["config"] == "micro" and meta["from_scratch"]["tokenizer"] == "trained:150"


def test_from_scratch_needs_exactly_one_tokenizer_source(tmp_path: Path):
    corpus = str(write_corpus(tmp_path / "c.txt", lines=20))
    with pytest.raises(SoftpromptError, match="exactly one of --tokenizer"):
        from_scratch("micro", corpus, tmp_path / "o", cfg())
    result = CliRunner().invoke(app, ["lm-adapt", "--model", "tiny", "--corpus", corpus, "--vocab-size", "100",
                                      "--output", str(tmp_path / "o")])
    assert result.exit_code != 0 and "only apply with --from-scratch" in str(result.exception or result.output)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- mixture

def test_mixture_interleaves_labelled_train_rows_behind_the_prefix(tmp_path: Path):
    data = tmp_path / "ag"
    split_file(write_ag_news(tmp_path / "all.csv", 80), data, validation_rows=40, seed=0)
    text = write_words(tmp_path / "w.txt")
    with text.open("a", encoding="utf-8") as f:  # the news text too, so it tokenizes without <unk>
        f.writelines(f"{row[1]} {row[2]} World Sports Business Sci/Tech label: text:\n"
                     for row in csv.reader((tmp_path / "all.csv").open()))
    tok = load_tokenizer(train_vocabulary(open_corpus(str(text)), 150, tmp_path / "v"))
    self_supervised = [{"input_ids": [5, 6, 1], "labels": [7, 1], "attention_mask": [1, 1, 1]}] * 400

    class Base:  # the LM dataset's interface, as MixtureDataset uses it
        def __iter__(self):
            return iter(self_supervised)

        def set_epoch(self, epoch):
            pass

    mixture = TaskMixture([("ag_news", str(data))], rate=0.3, prefix="label:")
    rows = list(mixture.dataset(Base(), tok, cfg()))
    labelled = [r for r in rows if r["input_ids"] != [5, 6, 1]]
    assert 0.22 < len(labelled) / len(rows) < 0.38  # ~ the rate
    texts = {tok.decode(r["input_ids"], skip_special_tokens=True) for r in labelled}
    assert all(t.startswith("label: text: Story") for t in texts)  # the prefix replaces "ag_news"
    # Exactly the train split's rows (token for token), never a validation row.
    def encoded(split: str) -> set[tuple[int, ...]]:
        rows = load_examples(get_task("ag_news", taskless=True), data, split)
        return {tuple(tok(f"label: {e.inputs}", max_length=32, truncation=True).input_ids) for e in rows}

    assert {tuple(r["input_ids"]) for r in labelled} == encoded("train")
    assert not encoded("train") & encoded("validation")
    targets = {tok.decode(r["labels"], skip_special_tokens=True) for r in labelled}
    assert targets <= {"World", "Sports", "Business", "Sci/Tech"} and len(targets) == 4
    assert list(mixture.dataset(Base(), tok, cfg())) == rows  # reproducible
    assert mixture.identity()["tasks"]["ag_news"].startswith("md5:")
    with pytest.raises(SoftpromptError, match="rate"):
        MixtureDataset(Base(), labelled, rate=1.0, seed=0)


# ------------------------------------------------------------------------------------------- ag_news

def test_ag_news_split_loader_and_format(tmp_path: Path):
    source = write_ag_news(tmp_path / "ag_news_test.csv", 100)
    counts = split_file(source, tmp_path / "ag", validation_rows=30, seed=0)
    assert counts == {"validation": 30, "train": 70}
    train = load_examples(get_task("ag_news"), tmp_path / "ag", "train")
    val = load_examples(get_task("ag_news"), tmp_path / "ag", "validation")
    assert len(train) == 70 and len(val) == 30
    assert not {e.inputs for e in train} & {e.inputs for e in val}  # disjoint
    story = next(e for e in train + val if e.inputs.startswith("ag_news text: Story 1 "))
    assert story.targets == "Sports"  # class 2
    # The same seed gives the same split; another seed another one.
    split_file(source, tmp_path / "again", validation_rows=30, seed=0)
    assert (tmp_path / "again" / "train.csv").read_bytes() == (tmp_path / "ag" / "train.csv").read_bytes()
    split_file(source, tmp_path / "other", validation_rows=30, seed=1)
    assert (tmp_path / "other" / "train.csv").read_bytes() != (tmp_path / "ag" / "train.csv").read_bytes()


def test_ag_news_validation_passes_clean_data_and_names_a_bad_row(tmp_path: Path):
    split_file(write_ag_news(tmp_path / "all.csv", 120), tmp_path / "ag", validation_rows=40, seed=0)
    config = ValidateConfig(min_rows=20, min_class_share=0.1, min_text_chars=1, max_text_chars=500, examples=3)
    report = validate("ag_news", tmp_path / "ag", tmp_path / "report", config, docs=False)
    assert report["success"], report["failed_checks"]
    lines = (tmp_path / "ag" / "train.csv").read_text().splitlines()
    lines[4] = '"9","Bad class","text"'
    lines[6] = '"1","only two columns"'
    (tmp_path / "ag" / "train.csv").write_text("\n".join(lines) + "\n")
    report = validate("ag_news", tmp_path / "ag", tmp_path / "report2", config, docs=False)
    assert not report["success"]
    text = json.dumps(report)
    assert "train.csv:5: malformed row (class '9' is not 1-4)" in text
    assert "train.csv:7: 2 columns, expected 3 (class, title, description)" in text
    with pytest.raises(SoftpromptError, match=r"train.csv:7: 2 columns, expected 3"):
        load_examples(get_task("ag_news"), tmp_path / "ag", "train")


def test_split_cli_refuses_bad_counts(tmp_path: Path):
    source = write_ag_news(tmp_path / "a.csv", 10)
    result = CliRunner().invoke(app, ["split", "--task", "ag_news", "--source", str(source), "--output",
                                      str(tmp_path / "o"), "--validation-rows", "10"])
    assert result.exit_code != 0 and "--validation-rows: must be between 1 and 9" in str(result.exception or "")
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(app, ["split", "--task", "ag_news", "--source", str(source), "--output",
                                      str(tmp_path / "o"), "--validation-rows", "4"])
    assert result.exit_code == 0, result.output
    assert "train 6 rows" in result.output and (tmp_path / "o" / "validation.csv").is_file()
