"""The soft prompt: P trainable vectors prepended to the frozen encoder's input embeddings.

It is a standard PEFT prompt-tuning adapter (`adapter_config.json` + `adapter_model.safetensors`),
so `peft.PeftModel.from_pretrained(base, path)` loads it. Next to it, `softprompt.json` records what
this project needs to trust it: the base model and a fingerprint of its embedding table, the task,
the training setup, the data version and metrics. Loading on another base model is refused.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.config import PromptConfig
from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, copy_logs, write_json
from softprompt.models import Base

META_FILE = "softprompt.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
COMMON_TOKENS = 5000  # paper: sampled-vocab draws from the 5,000 most common tokens
RANDOM_RANGE = 0.5  # paper: random init is uniform in [-0.5, 0.5]


def common_token_ids(tokenizer: PreTrainedTokenizerBase, n: int = COMMON_TOKENS) -> list[int]:
    """The `n` most common non-special token ids.

    T5's SentencePiece vocabulary is ordered by likelihood in the pre-training corpus, so the most
    common tokens are the lowest ids once special tokens are skipped (as in the paper).
    """
    special = set(tokenizer.all_special_ids)
    vocab_size = len(tokenizer)
    ids = [i for i in range(vocab_size) if i not in special and not _is_sentinel(tokenizer, i)]
    return ids[:n]


def _is_sentinel(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bool:
    token = tokenizer.convert_ids_to_tokens(token_id)
    return isinstance(token, str) and token.startswith("<extra_id_")


def label_embedding(embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase, label: str) -> torch.Tensor:
    """Mean embedding of a label string's tokens (multi-token labels are averaged, as in the paper)."""
    ids = tokenizer(label, add_special_tokens=False).input_ids
    if not ids:
        raise SoftpromptError(f"label {label!r} tokenizes to nothing; cannot use class-label init")
    return embeddings[ids].mean(dim=0)


def initial_prompt(
    embeddings: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    config: PromptConfig,
    labels: tuple[str, ...] | None,
    seed: int,
) -> torch.Tensor:
    """The P x d starting values of the prompt for the paper's three initialisations."""
    generator = torch.Generator().manual_seed(seed)
    length, dim = config.length, embeddings.shape[1]
    if config.init == "random":
        return (torch.rand(length, dim, generator=generator) * 2 - 1) * RANDOM_RANGE
    vocab = torch.tensor(common_token_ids(tokenizer))
    replace = len(vocab) < length
    picks = (torch.randint(len(vocab), (length,), generator=generator) if replace
             else torch.randperm(len(vocab), generator=generator)[:length])
    prompt = embeddings[vocab[picks]].clone()
    if config.init == "class-label":
        if not labels:
            raise SoftpromptError("class-label init needs a classification task; use --init sampled-vocab")
        for i, label in enumerate(labels[:length]):
            prompt[i] = label_embedding(embeddings, tokenizer, label)
    return prompt.to(torch.float32)


def attach_prompt(base: Base, config: PromptConfig, labels: tuple[str, ...] | None, seed: int) -> PeftModel:
    """Wrap the frozen base model with a freshly initialised soft prompt (only the prompt trains)."""
    model = base.model
    peft_config = PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=config.length,
        # One prompt for the encoder only: T5 reads the prompt, the decoder does not (paper, sec. 2).
        num_transformer_submodules=1,
        prompt_tuning_init=PromptTuningInit.RANDOM,
        token_dim=model.config.d_model,
        # base_model_name_or_path is left to peft (it overwrites it with the model's name_or_path, warning when
        # they differ); softprompt.json records the base by name and embedding fingerprint.
    )
    peft_model = get_peft_model(model, peft_config)
    embeddings = model.get_input_embeddings().weight.detach().to(torch.float32).cpu()
    values = initial_prompt(embeddings, base.tokenizer, config, labels, seed)
    prompt_embedding(peft_model).weight.data.copy_(values)
    return peft_model


def prompt_embedding(peft_model: PeftModel) -> torch.nn.Embedding:
    return peft_model.prompt_encoder[peft_model.active_adapter].embedding


def prompt_vectors(peft_model: PeftModel) -> torch.Tensor:
    """The prompt as a P x d tensor (a copy)."""
    return prompt_embedding(peft_model).weight.detach().clone()


def save_prompt(peft_model: PeftModel, output: str | Path, meta: dict[str, Any], logs: Path | None = None) -> Path:
    """Atomically write the PEFT adapter plus softprompt.json (and the TensorBoard `logs`) to `output`."""
    with atomic_dir(output) as tmp:
        # A soft prompt never changes the base's embeddings; "auto" would look the base up on the Hub to decide.
        peft_model.save_pretrained(str(tmp), save_embedding_layers=False)
        write_json(tmp / META_FILE, meta)
        copy_logs(logs, tmp)
    return Path(output)


def read_meta(prompt_dir: str | Path) -> dict[str, Any]:
    """softprompt.json of a prompt directory, checking that the directory holds a prompt."""
    prompt_dir = Path(prompt_dir)
    if not prompt_dir.is_dir():
        raise SoftpromptError(f"{prompt_dir}: no such prompt directory; pass the --output of `softprompt train`")
    missing = [f for f in (*ADAPTER_FILES, META_FILE) if not (prompt_dir / f).is_file()]
    if missing:
        raise SoftpromptError(f"{prompt_dir}: not a softprompt prompt (missing {', '.join(missing)}); "
                              "pass the --output of `softprompt train --method prompt`")
    try:
        meta = json.loads((prompt_dir / META_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SoftpromptError(f"{prompt_dir / META_FILE}: invalid JSON ({e.msg} at line {e.lineno})") from e
    for key in ("base_model", "base_fingerprint", "prompt_length"):
        if key not in meta:
            raise SoftpromptError(f"{prompt_dir / META_FILE}: missing field {key!r}; the prompt was not "
                                  "written by softprompt")
    return meta


class BaseMismatch(SoftpromptError):
    """A prompt trained on another base model than the one it is loaded onto."""


def check_base(meta: dict[str, Any], base: Base, what: str, fix: str) -> None:
    """Refuse a prompt (its softprompt.json `meta`) trained on another base than `base`: the embedding
    fingerprint decides, the names are for the message. `what` names the prompt, `fix` says what to do."""
    if meta["base_fingerprint"] != base.fingerprint:
        raise BaseMismatch(f"{what} was trained on base model {meta['base_model']!r} "
                           f"({meta['base_fingerprint'][:19]}…), not on {base.name!r} "
                           f"({base.fingerprint[:19]}…); {fix}")


def load_prompt(base: Base, prompt_dir: str | Path) -> tuple[PeftModel, dict[str, Any]]:
    """Load a saved prompt onto `base`, refusing a prompt trained on another base model."""
    meta = read_meta(prompt_dir)
    check_base(meta, base, f"{prompt_dir}: prompt", f"pass --model {meta['base_model']}")
    try:
        with warnings.catch_warnings():
            # peft warns "base_model_name_or_path was renamed" on every load onto a model built from a config
            # (tiny, from-scratch bases), whose name_or_path is empty; the fingerprint check above is the real one.
            warnings.filterwarnings("ignore", message=".*base_model_name_or_path` was renamed")
            model = PeftModel.from_pretrained(base.model, str(prompt_dir))
    except (ValueError, RuntimeError, OSError) as e:
        raise SoftpromptError(f"{prompt_dir}: cannot load the adapter ({str(e).splitlines()[0]})") from e
    expected = (meta["prompt_length"], base.model.config.d_model)
    if tuple(prompt_embedding(model).weight.shape) != expected:
        raise SoftpromptError(f"{prompt_dir}: prompt has shape {tuple(prompt_embedding(model).weight.shape)}, "
                              f"expected {expected} from softprompt.json")
    model.eval()
    return model, meta


def freeze(model: PreTrainedModel) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
