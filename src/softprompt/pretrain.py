"""Pretraining from scratch: a new T5 1.1 model from a named config, its vocabulary, and T5's multi-task mixture.

- `models:` in params.yaml names T5 1.1 shapes (d_model, layers, heads, d_ff). `initial_checkpoint` builds
  one with seeded random weights, gated-GELU and an untied output layer (as T5 1.1), and saves it with its
  tokenizer as an ordinary checkpoint; `softprompt lm-adapt --from-scratch NAME` then pretrains it.
- The tokenizer is a SentencePiece file or Hub id (T5's own 32k vocabulary), or a vocabulary trained on the
  corpus with the `sentencepiece` trainer (`train_vocabulary`): with a small model most parameters and
  compute otherwise go into a 32k softmax.
- The multi-task mixture (`MixtureDataset`) interleaves labelled task examples with the self-supervised
  ones, as T5's original pretraining did. Each labelled example is the task's own formatting without the
  task-name prefix, behind `mixture_prefix`, so the task-name format the prompt is later trained and
  evaluated on is never seen in pretraining.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration, T5Tokenizer

from softprompt.config import load_params
from softprompt.corpus import Corpus
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, file_md5, write_json

log = logging.getLogger(__name__)

SPIECE = "spiece.model"
EXTRA_IDS = 100  # T5's sentinels <extra_id_0..99>, appended above the SentencePiece pieces
# T5's SentencePiece layout: pad 0, eos 1, unk 2, no bos (T5Tokenizer relies on these ids).
SPM_IDS = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
# The T5 1.1 architecture every named config shares; the shape comes from params.yaml `models:`.
T5_1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
SHAPE_KEYS = ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads")
Row = dict[str, list[int]]


def model_shapes() -> dict[str, dict[str, int]]:
    """The named T5 1.1 shapes of params.yaml `models:`."""
    return load_params().get("models", {})


def model_shape(name: str) -> dict[str, int]:
    shapes = model_shapes()
    if name not in shapes:
        raise SoftpromptError(f"unknown model config {name!r}; choose one of {', '.join(sorted(shapes))} "
                              "(params.yaml models:) or add it there")
    shape = shapes[name]
    missing = [k for k in SHAPE_KEYS if k not in shape]
    if missing:
        raise SoftpromptError(f"params.yaml models.{name}: missing {', '.join(missing)}")
    return {k: int(shape[k]) for k in SHAPE_KEYS}


def train_vocabulary(corpus: Corpus, vocab_size: int, output: str | Path, seed: int = 0) -> Path:
    """Train a T5-style SentencePiece unigram vocabulary of `vocab_size` pieces on the corpus.

    Writes `output/spiece.model` (+ the tokenizer files) and returns `output`. T5's conventions: pad 0,
    eos 1, unk 2, no bos, and 100 sentinels appended by the tokenizer.
    """
    import sentencepiece as spm

    if vocab_size < 64:
        raise SoftpromptError(f"vocab_size: must be >= 64, got {vocab_size}")
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        with text.open("w", encoding="utf-8") as f:
            lines = sum(f.write(t.replace("\n", " ") + "\n") > 0 for t in corpus.texts())
        if not lines:
            raise SoftpromptError(f"{corpus.spec}: no text to train a vocabulary on")
        spm.set_random_generator_seed(seed)  # one thread + a fixed seed: the same corpus gives the same pieces
        try:
            spm.SentencePieceTrainer.train(
                input=str(text), model_prefix=str(Path(tmp) / "spiece"), vocab_size=vocab_size,
                model_type="unigram", character_coverage=0.9995, input_sentence_size=2_000_000,
                shuffle_input_sentence=True, seed_sentencepiece_size=200_000, num_threads=1,
                minloglevel=2, **SPM_IDS)  # type: ignore[arg-type]
        except RuntimeError as e:
            raise SoftpromptError(f"cannot train a {vocab_size}-piece vocabulary on {corpus.spec} ({e}); "
                                  "lower --vocab-size or add text") from e
        with atomic_dir(output) as out:
            shutil.copy(Path(tmp) / f"{SPIECE}", out / SPIECE)
            # from_pretrained on a directory holding only spiece.model converts it (with its 100 sentinels);
            # constructing T5Tokenizer(vocab_file=...) directly does not read the pieces in transformers 5.
            T5Tokenizer.from_pretrained(str(out), extra_ids=EXTRA_IDS).save_pretrained(str(out))
    return output


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerBase:
    """A T5 tokenizer from a spiece.model file, a directory holding one (or tokenizer files), or a Hub id."""
    path = Path(spec)
    try:
        if path.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(path, Path(tmp) / SPIECE)
                return T5Tokenizer.from_pretrained(tmp, extra_ids=EXTRA_IDS)
        return AutoTokenizer.from_pretrained(str(spec))
    except (OSError, ValueError) as e:
        raise SoftpromptError(f"cannot load tokenizer {spec!s}: pass a spiece.model file, a tokenizer directory "
                              f"or a Hub id ({str(e).splitlines()[0]})") from e


def new_model(shape: dict[str, int], vocab_size: int, seed: int) -> T5ForConditionalGeneration:
    """A T5 1.1 model of `shape` with seeded random weights and an untied output layer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = T5Config(vocab_size=vocab_size, **shape, **T5_1_1)
        model = T5ForConditionalGeneration(config)
        # transformers ties lm_head to the embeddings at construction; T5 1.1's output layer is its own, and
        # std d_model**-0.5 keeps the first logits O(1) (T5X's init of the unembedding).
        head = torch.randn(vocab_size, config.d_model) * config.d_model**-0.5
        model.lm_head.weight = torch.nn.Parameter(head)
    return model


def initial_checkpoint(config_name: str, tokenizer: PreTrainedTokenizerBase, output: str | Path,
                       seed: int) -> Path:
    """Save a new model of the named config with `tokenizer` as an ordinary checkpoint (atomically)."""
    shape = model_shape(config_name)
    model = new_model(shape, vocab_size=len(tokenizer), seed=seed)
    model.config._name_or_path = f"scratch:{config_name}"
    with atomic_dir(output) as out:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    return Path(output)


# ---------------------------------------------------------------------------------------- the mixture

def mixture_rows(tasks: Sequence[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, prefix: str,
                 max_source_length: int, max_target_length: int) -> list[Row]:
    """The train split of each (task, data dir), formatted by the task without its name prefix, behind
    `prefix`, tokenized (EOS appended, cut to the lengths)."""
    from softprompt.tasks import get_task, load_examples

    rows: list[Row] = []
    for name, data in tasks:
        task = get_task(name, taskless=True)
        examples = load_examples(task, data, "train")
        inputs = tokenizer([f"{prefix} {e.inputs}".strip() for e in examples], max_length=max_source_length,
                           truncation=True)["input_ids"]
        targets = tokenizer([e.targets for e in examples], max_length=max_target_length,
                            truncation=True)["input_ids"]
        rows += [{"input_ids": i, "labels": t} for i, t in zip(inputs, targets)]
    return rows


def mixture_identity(tasks: Sequence[tuple[str, str]], prefix: str, rate: float) -> dict[str, Any]:
    """What identifies a mixture for content-addressed caching: each task's train-file md5, prefix and rate."""
    from softprompt.tasks import get_task
    from softprompt.tasks.loading import find_split_file

    return {"rate": rate, "prefix": prefix,
            "tasks": {name: "md5:" + file_md5(find_split_file(get_task(name), data, "train"))
                      for name, data in tasks}}


class MixtureDataset(torch.utils.data.IterableDataset):
    """Self-supervised examples with labelled ones interleaved at `rate` (their expected share of all examples).

    The labelled rows cycle, reshuffled each pass; which positions get one is fixed by (seed, epoch), so a
    run is reproducible and a resume sees the same stream.
    """

    def __init__(self, base: Any, rows: list[Row], rate: float, seed: int):
        if not 0 < rate < 1:
            raise SoftpromptError(f"mixture rate: must be in (0, 1), got {rate}")
        if not rows:
            raise SoftpromptError("the mixture has no labelled examples; check the --mix tasks' train splits")
        self.base, self.rows, self.rate, self.seed = base, rows, rate, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def labelled(self, rng: np.random.Generator) -> Iterator[Row]:
        while True:
            for i in rng.permutation(len(self.rows)):
                row = self.rows[int(i)]
                yield {**row, "attention_mask": [1] * len(row["input_ids"])}

    def __iter__(self) -> Iterator[Row]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        labelled = self.labelled(np.random.default_rng([self.seed, self.epoch, 8]))
        extra = self.rate / (1 - self.rate)  # labelled examples per self-supervised one, on average
        for row in self.base:
            yield row
            for _ in range(int(rng.poisson(extra))):
                yield next(labelled)


class TaskMixture:
    """Labelled tasks for `lm_adapt(mixture=...)`: (task, data dir) pairs, their share and their prefix."""

    def __init__(self, tasks: Sequence[tuple[str, str]], rate: float, prefix: str):
        if not 0 < rate < 1:
            raise SoftpromptError(f"mixture rate: must be in (0, 1), got {rate}")
        self.tasks, self.rate, self.prefix = [(t, str(d)) for t, d in tasks], rate, prefix

    def identity(self) -> dict[str, Any]:
        return mixture_identity(self.tasks, self.prefix, self.rate)

    def dataset(self, base: Any, tokenizer: PreTrainedTokenizerBase, cfg: Any) -> MixtureDataset:
        rows = mixture_rows(self.tasks, tokenizer, self.prefix, cfg.max_source_length, cfg.max_target_length)
        log.info("mixture: %d labelled examples from %s at rate %.2f", len(rows),
                 ", ".join(t for t, _ in self.tasks), self.rate)
        return MixtureDataset(base, rows, self.rate, cfg.seed)


def parse_mix(specs: Sequence[str]) -> list[tuple[str, str]]:
    """`TASK=DIR` pairs (the --mix option) -> [(task, dir)], checking each task and its train split exist."""
    from softprompt.tasks import get_task
    from softprompt.tasks.loading import find_split_file

    pairs = []
    for spec in specs:
        name, sep, data = spec.partition("=")
        if not sep or not name or not data:
            raise SoftpromptError(f"--mix {spec!r}: expected TASK=DIR, e.g. ag_news=data/ag_news")
        find_split_file(get_task(name), data, "train")
        pairs.append((name, data))
    return pairs


def from_scratch(config_name: str, corpus_spec: str, output: str | Path, cfg: Any, tokenizer: str | None = None,
                 vocab_size: int | None = None, **lm_adapt_kwargs: Any) -> dict[str, Any]:
    """Pretrain a new model of a named config on `corpus_spec` (`softprompt lm-adapt --from-scratch NAME`).

    The tokenizer is `tokenizer` (a spiece.model, directory or Hub id) or, with `vocab_size`, a SentencePiece
    vocabulary trained on the corpus. The initial checkpoint is kept beside the output (`OUTPUT.init`) until
    training finishes, so an interrupted run resumes from the same weights; then `lm_adapt` trains it.
    """
    from softprompt.corpus import open_corpus
    from softprompt.lm_adapt import METRICS_FILE, lm_adapt, read_metrics

    if (tokenizer is None) == (vocab_size is None):
        raise SoftpromptError("pretraining from scratch needs exactly one of --tokenizer (a spiece.model, "
                              "directory or Hub id) and --vocab-size N (train a vocabulary on the corpus)")
    model_shape(config_name)  # fail on an unknown config before any work
    output = Path(output)
    init_dir = output.with_name(output.name + ".init")
    if not (init_dir / "config.json").is_file():
        if vocab_size is not None:
            vocab_dir = output.with_name(output.name + ".vocab")
            log.info("training a %d-piece SentencePiece vocabulary on %s", vocab_size, corpus_spec)
            train_vocabulary(open_corpus(corpus_spec, cfg.text_field), vocab_size, vocab_dir, seed=cfg.seed)
            tok = load_tokenizer(vocab_dir)
            shutil.rmtree(vocab_dir, ignore_errors=True)
        else:
            tok = load_tokenizer(str(tokenizer))
        initial_checkpoint(config_name, tok, init_dir, seed=cfg.seed)
    meta = lm_adapt(str(init_dir), corpus_spec, output, cfg, **lm_adapt_kwargs)
    shutil.rmtree(init_dir, ignore_errors=True)
    scratch = {"config": config_name, **model_shape(config_name),
               "tokenizer": str(tokenizer) if tokenizer else f"trained:{vocab_size}"}
    # The metrics file says how the base began (its `base_model` names the deleted OUTPUT.init).
    write_json(output / METRICS_FILE, {**(read_metrics(output) or {}), "from_scratch": scratch})
    return {**meta, "from_scratch": scratch}
