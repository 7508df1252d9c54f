"""Base model sources: a Hub id, a local directory, a gs:// URI, or `tiny` (built locally, no download)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    ByT5Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from softprompt.device import CPU_FLOAT32, Placement
from softprompt.errors import SoftpromptError

TINY = "tiny"
# A T5 1.1-style config (gated-gelu, untied input/output embeddings), small enough for CPU tests.
TINY_CONFIG = dict(
    vocab_size=384,  # ByT5's byte vocabulary: 3 specials + 256 bytes + 125 sentinels
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    dropout_rate=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)
TINY_SEED = 1234


@dataclass
class Base:
    """A loaded base model with what identifies it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user passed (`tiny`, a Hub id, a directory, a gs:// URI)
    fingerprint: str  # sha256 of the input embedding table: identifies the exact checkpoint
    placement: Placement = CPU_FLOAT32  # where the weights are and their dtype (softprompt.device)


def embedding_fingerprint(model: PreTrainedModel) -> str:
    """sha256 over the shape and float32 bytes of the input embedding table."""
    weight = model.get_input_embeddings().weight.detach().to(torch.float32).cpu().contiguous()
    digest = hashlib.sha256(str(tuple(weight.shape)).encode())
    digest.update(weight.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def build_tiny() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The `tiny` model: the same weights in every process (seeded init) and a byte tokenizer (no files)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        config = T5Config(**TINY_CONFIG)
        model = T5ForConditionalGeneration(config)
        # transformers 5 ties lm_head to the input embeddings at construction; T5 1.1 has its own output
        # layer, so give it separate weights (saved and reloaded untied, as T5 1.1 checkpoints are).
        # std d_model**-0.5 keeps the initial logits O(1), so the tiny model learns in a few steps.
        lm_head = torch.randn(config.vocab_size, config.d_model) * config.d_model**-0.5
        model.lm_head.weight = torch.nn.Parameter(lm_head)
    return model, ByT5Tokenizer()


def load_base(spec: str, cache_dir: str | Path | None = None, placement: Placement = CPU_FLOAT32) -> Base:
    """Load the base model named by `spec` (see module doc) in eval mode, its weights on `placement`'s device in
    its dtype. The default, float32 on CPU, is what training loads (the Trainer moves the model); inference
    paths pass `softprompt.device.choose_placement()`. The fingerprint is taken from the float32 weights before
    the cast, so a prompt trained on the float32 base matches the same base loaded in bf16."""
    if spec == TINY:
        model, tokenizer = build_tiny()
    else:
        path = resolve_model_path(spec, cache_dir)
        model, tokenizer = _load_pretrained(path, spec)
    model.eval()
    fingerprint = embedding_fingerprint(model)
    model.to(device=placement.device, dtype=placement.dtype)  # a no-op for the default
    return Base(model=model, tokenizer=tokenizer, name=spec, fingerprint=fingerprint, placement=placement)


def resolve_model_path(spec: str, cache_dir: str | Path | None = None) -> str:
    """A local directory or Hub id for `spec`; gs:// URIs are downloaded into the cache first."""
    if spec.startswith("gs://"):
        from softprompt.gcs import download_prefix

        return str(download_prefix(spec, cache_dir or default_cache_dir() / "gcs"))
    path = Path(spec)
    if path.exists():
        if not (path / "config.json").is_file():
            raise SoftpromptError(f"{path}: not a model directory (no config.json); pass a saved "
                                  "transformers checkpoint, a Hub id, a gs:// URI or `tiny`")
        return str(path)
    if spec.startswith((".", "/")) or spec.count("/") > 1:
        raise SoftpromptError(f"{spec}: no such model directory")
    return spec  # a Hub id


def _load_pretrained(path: str, spec: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
    except OSError as e:
        hint = ("the Hugging Face Hub cannot be reached (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE")
                else "it is neither a local checkpoint nor a reachable Hub id")
        raise SoftpromptError(f"cannot load model {spec!r}: {hint}; pass a local directory, a gs:// URI, "
                              f"or --model tiny ({str(e).splitlines()[0]})") from e
    return model, tokenizer


def default_cache_dir() -> Path:
    return Path(os.environ.get("SOFTPROMPT_CACHE", Path.home() / ".cache" / "softprompt"))


def sentinel_id(tokenizer: PreTrainedTokenizerBase, n: int = 0) -> int:
    """Token id of T5's n-th sentinel `<extra_id_n>`."""
    token_id = tokenizer.convert_tokens_to_ids(f"<extra_id_{n}>")
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise SoftpromptError(f"tokenizer has no sentinel token <extra_id_{n}>")
    return int(token_id)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
