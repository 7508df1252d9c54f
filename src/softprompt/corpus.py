"""Text corpora for LM adaptation: local .txt/.jsonl files (or a directory of them), or a streamed
Hugging Face dataset, tokenized in batches and cut into fixed-length token segments.

Nothing is materialised: texts are read lazily and tokenized a batch at a time, so C4 streams through in
constant memory. Span corruption joins the documents and cuts the stream (T5's `reduce_concat_tokens` +
`split_tokens`); prefix LM cuts each document on its own, so a continuation never starts in another one.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from softprompt.errors import SoftpromptError
from softprompt.io import file_md5

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
HF_PREFIX = "hf:"
# Shorthands for Hugging Face datasets; `c4` is what T5 (and the paper's LM adaptation) trained on.
ALIASES = {"c4": "hf:allenai/c4:en"}
TOKENIZE_BATCH = 256  # texts per tokenizer call: fast tokenizers parallelise within a batch


@dataclass(frozen=True)
class Corpus:
    """Where texts come from. `spec` is what the user passed; `files` or `dataset` says how to read it."""

    spec: str
    text_field: str = "text"
    files: tuple[Path, ...] = ()
    dataset: str | None = None  # a Hub id or a local dataset directory, for datasets.load_dataset
    config: str | None = None
    split: str = "train"

    def texts(self) -> Iterator[str]:
        """Every non-empty text, in order; iterating again starts from the beginning."""
        if self.dataset is not None:
            yield from stream_hf(self.dataset, self.config, self.split, self.text_field)
            return
        for path in self.files:
            yield from read_texts(path, self.text_field)

    def identity(self) -> dict[str, Any]:
        """What identifies the corpus contents (for content-addressed caching): file md5s or the dataset id."""
        if self.dataset is not None:
            return {"dataset": self.dataset, "config": self.config, "split": self.split, "field": self.text_field}
        return {"files": {p.name: md5(p) for p in self.files}, "field": self.text_field}


def open_corpus(spec: str, text_field: str = "text", split: str = "train") -> Corpus:
    """Resolve a corpus spec: a .txt/.jsonl file, a directory of them, `hf:NAME[:CONFIG]`, or `c4`."""
    spec = ALIASES.get(spec, spec)
    if spec.startswith(HF_PREFIX):
        name, _, config = spec[len(HF_PREFIX):].partition(":")
        if not name:
            raise SoftpromptError(f"corpus {spec!r}: expected hf:DATASET[:CONFIG], e.g. hf:allenai/c4:en")
        return Corpus(spec, text_field, dataset=name, config=config or None, split=split)
    path = Path(spec)
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*") if p.is_file() and _readable(p)))
        if not files:
            raise SoftpromptError(f"{path}: no .txt or .jsonl files in this directory; add some or pass a file")
        return Corpus(spec, text_field, files=files)
    if path.is_file():
        if not _readable(path):
            raise SoftpromptError(f"{path}: unsupported corpus file; use .txt (one text a line), .jsonl "
                                  f"(a {text_field!r} field a line), their .gz, or a directory of them")
        return Corpus(spec, text_field, files=(path,))
    raise SoftpromptError(f"{spec}: no such corpus file or directory; for a Hugging Face dataset write "
                          "hf:NAME[:CONFIG] (e.g. hf:allenai/c4:en, or c4)")


def _readable(path: Path) -> bool:
    return path.name.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES) and not path.name.startswith(".")


def read_texts(path: Path, text_field: str = "text") -> Iterator[str]:
    """Texts of one file: each non-blank line of a .txt, the `text_field` of each line of a .jsonl."""
    is_jsonl = path.name.endswith(JSONL_SUFFIXES)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                text = _jsonl_text(path, lineno, line, text_field) if is_jsonl else line.rstrip("\n")
                if text.strip():
                    yield text
    except UnicodeDecodeError as e:
        raise SoftpromptError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-encode it as UTF-8") from e
    except (EOFError, gzip.BadGzipFile) as e:
        raise SoftpromptError(f"{path}: cannot read ({e}); the file may be truncated or corrupt") from e


def _jsonl_text(path: Path, lineno: int, line: str, text_field: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or remove that line") from e
    if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
        raise SoftpromptError(f"{path}:{lineno}: no string field {text_field!r}; pass --text-field NAME "
                              "naming the field that holds the text")
    return row[text_field]


def stream_hf(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    """Texts of a Hugging Face dataset, streamed (never downloaded whole)."""
    local = Path(name).exists()
    if not local and (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")):
        # Streaming needs the network; fail now rather than after a long retry loop.
        raise SoftpromptError(f"cannot stream dataset {name!r}: the Hugging Face Hub is offline "
                              "(HF_HUB_OFFLINE is set); use a local corpus (.txt/.jsonl file or directory)")
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except SoftpromptError:
        raise
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise SoftpromptError(f"cannot stream dataset {name!r} (config {config}, split {split}): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; check the name, "
                              "config and network, or use a local corpus") from e
    if first is None:
        return
    if not isinstance(first.get(text_field), str):
        raise SoftpromptError(f"dataset {name!r}: rows have no string field {text_field!r} (fields: "
                              f"{', '.join(first)}); pass --text-field NAME")
    for row in itertools.chain([first], rows):
        text = row.get(text_field)
        if isinstance(text, str) and text.strip():
            yield text


def md5(path: Path) -> str:
    """md5 of a file's bytes (DVC's file hash), prefixed `md5:`."""
    return "md5:" + file_md5(path)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def token_batches(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase,
                  batch: int = TOKENIZE_BATCH) -> Iterator[np.ndarray]:
    """The texts' token ids, a tokenizer batch at a time, concatenated without EOS (T5's reduce_concat_tokens)."""
    for chunk in batched(texts, batch):
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        yield np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)


def pack(arrays: Iterable[np.ndarray], length: int, min_length: int = 1) -> Iterator[np.ndarray]:
    """Cut the concatenated token stream into segments of `length` tokens (T5's split_tokens).

    The final, shorter segment is kept if it has at least `min_length` tokens.
    """
    if length < 1:
        raise SoftpromptError(f"segment length must be >= 1, got {length}")
    carry = np.empty(0, dtype=np.int64)
    for array in arrays:
        buf = np.concatenate([carry, array]) if len(carry) else array
        full = len(buf) // length
        for i in range(full):
            yield buf[i * length:(i + 1) * length]
        carry = buf[full * length:]
    if len(carry) >= min_length:
        yield carry


def segments(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, length: int, min_length: int = 1) -> Iterator[
        np.ndarray]:
    """The corpus as packed token segments of `length` tokens (documents joined: span corruption)."""
    return pack(token_batches(corpus.texts(), tokenizer), length, min_length)


def document_tokens(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase,
                    batch: int = TOKENIZE_BATCH) -> Iterator[np.ndarray]:
    """Each text's token ids on its own (no EOS), tokenized a batch at a time."""
    for chunk in batched(texts, batch):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            yield np.asarray(ids, dtype=np.int64)


def document_segments(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, length: int,
                      min_length: int = 1) -> Iterator[np.ndarray]:
    """Each document cut into segments of `length` tokens, never joined with the next (prefix LM: T5's
    `prefix_lm` splits one document's tokens, `split_tokens`, without `reduce_concat_tokens`). A document's
    last, shorter segment is kept if it has at least `min_length` tokens."""
    for tokens in document_tokens(corpus.texts(), tokenizer):
        yield from pack([tokens], length, min_length)
