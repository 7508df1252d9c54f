import json

import pytest
import torch
from peft import PeftModel

from softprompt.config import PromptConfig
from softprompt.errors import SoftpromptError
from softprompt.models import load_base
from softprompt.prompt import (
    COMMON_TOKENS,
    attach_prompt,
    common_token_ids,
    label_embedding,
    load_prompt,
    prompt_vectors,
    read_meta,
    save_prompt,
)

LABELS = ("entailment", "not_entailment")


def embeddings(base):
    return base.model.get_input_embeddings().weight.detach()


def test_random_init_is_uniform_in_half_range():
    base = load_base("tiny")
    p = prompt_vectors(attach_prompt(base, PromptConfig(length=50, init="random"), None, seed=0))
    assert p.shape == (50, base.model.config.d_model)
    assert p.min() >= -0.5 and p.max() <= 0.5 and p.std() > 0.2  # U[-0.5,0.5] has std 0.29


def test_sampled_vocab_rows_are_real_common_token_embeddings():
    base = load_base("tiny")
    p = prompt_vectors(attach_prompt(base, PromptConfig(length=20, init="sampled-vocab"), None, seed=0))
    common = embeddings(base)[common_token_ids(base.tokenizer)]
    for row in p:
        assert (common == row).all(dim=1).any(), "every prompt row must equal a common token's embedding"
    assert len({tuple(r.tolist()) for r in p}) == 20  # sampled without replacement
    specials = set(base.tokenizer.all_special_ids)
    assert not specials & set(common_token_ids(base.tokenizer))
    assert len(common_token_ids(base.tokenizer)) <= COMMON_TOKENS


def test_class_label_rows_are_mean_label_embeddings_then_vocab():
    base = load_base("tiny")
    p = prompt_vectors(attach_prompt(base, PromptConfig(length=6, init="class-label"), LABELS, seed=0))
    emb = embeddings(base)
    for i, label in enumerate(LABELS):
        ids = base.tokenizer(label, add_special_tokens=False).input_ids
        assert len(ids) > 1  # multi-token labels are averaged
        assert torch.allclose(p[i], emb[ids].mean(0))
        assert torch.allclose(p[i], label_embedding(emb, base.tokenizer, label))
    common = emb[common_token_ids(base.tokenizer)]
    for row in p[len(LABELS):]:
        assert (common == row).all(dim=1).any()


def test_inits_are_seeded():
    base = load_base("tiny")
    cfg = PromptConfig(length=8, init="sampled-vocab")
    a = prompt_vectors(attach_prompt(load_base("tiny"), cfg, None, seed=3))
    b = prompt_vectors(attach_prompt(load_base("tiny"), cfg, None, seed=3))
    c = prompt_vectors(attach_prompt(base, cfg, None, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_class_label_init_needs_labels():
    with pytest.raises(SoftpromptError, match="class-label"):
        attach_prompt(load_base("tiny"), PromptConfig(length=4, init="class-label"), None, seed=0)


def test_only_the_prompt_receives_gradients():
    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=4, init="random"), None, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 1 and "prompt_encoder" in trainable[0]
    x = base.tokenizer(["a b c", "d"], return_tensors="pt", padding=True)
    y = base.tokenizer(["yes", "no"], return_tensors="pt", padding=True).input_ids
    model(**x, labels=y).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert list(grads) == trainable and grads[trainable[0]].abs().sum() > 0


def test_prompt_is_prepended_with_extended_attention_mask():
    """Encoder sees P prompt vectors then the text; the prompt changes the output."""
    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=3, init="random"), None, seed=0)
    x = base.tokenizer(["hello"], return_tensors="pt")
    y = base.tokenizer(["ok"], return_tensors="pt").input_ids
    with torch.no_grad():
        with_prompt = model(**x, labels=y).logits
        embeds = torch.cat([prompt_vectors(model)[None], base.model.get_input_embeddings()(x.input_ids)], 1)
        mask = torch.cat([torch.ones(1, 3, dtype=x.attention_mask.dtype), x.attention_mask], 1)
        manual = base.model(inputs_embeds=embeds, attention_mask=mask, labels=y).logits
        without = base.model(**x, labels=y).logits
    assert torch.allclose(with_prompt, manual, atol=1e-5)
    assert not torch.allclose(with_prompt, without)


def test_save_then_plain_peft_load_gives_same_logits(tmp_path):
    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=5, init="sampled-vocab"), None, seed=1)
    save_prompt(model, tmp_path / "p", {"base_model": "tiny", "base_fingerprint": base.fingerprint,
                                        "prompt_length": 5})
    assert {"adapter_config.json", "adapter_model.safetensors", "softprompt.json"} <= {
        f.name for f in (tmp_path / "p").iterdir()}
    x = base.tokenizer(["some input text"], return_tensors="pt")
    y = base.tokenizer(["label"], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(**x, labels=y).logits
    fresh = load_base("tiny")
    plain = PeftModel.from_pretrained(fresh.model, str(tmp_path / "p"))  # plain PEFT, no softprompt code
    with torch.no_grad():
        assert torch.allclose(plain(**x, labels=y).logits, expected, atol=1e-6)
        out = plain.generate(**x, max_new_tokens=3)
    assert out.shape[0] == 1
    loaded, meta = load_prompt(load_base("tiny"), tmp_path / "p")
    assert meta["prompt_length"] == 5 and torch.equal(prompt_vectors(loaded), prompt_vectors(model))


def test_prompt_on_another_base_model_is_refused(tmp_path):
    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=2, init="random"), None, seed=0)
    save_prompt(model, tmp_path / "p", {"base_model": "tiny", "base_fingerprint": "sha256:" + "0" * 64,
                                        "prompt_length": 2})
    with pytest.raises(SoftpromptError, match="trained on base model"):
        load_prompt(load_base("tiny"), tmp_path / "p")


def test_not_a_prompt_directory_errors(tmp_path):
    with pytest.raises(SoftpromptError, match="no such prompt directory"):
        read_meta(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "adapter_config.json").write_text("{}")
    with pytest.raises(SoftpromptError, match="missing adapter_model.safetensors, softprompt.json"):
        read_meta(tmp_path / "d")
    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=2, init="random"), None, seed=0)
    save_prompt(model, tmp_path / "p", {"base_model": "tiny", "base_fingerprint": base.fingerprint,
                                        "prompt_length": 2})
    (tmp_path / "p" / "softprompt.json").write_text("{not json")
    with pytest.raises(SoftpromptError, match="invalid JSON"):
        read_meta(tmp_path / "p")
    (tmp_path / "p" / "softprompt.json").write_text(json.dumps({"base_model": "tiny"}))
    with pytest.raises(SoftpromptError, match="missing field 'base_fingerprint'"):
        read_meta(tmp_path / "p")


def test_shape_mismatch_is_refused(tmp_path):
    base = load_base("tiny")
    model = attach_prompt(base, PromptConfig(length=2, init="random"), None, seed=0)
    save_prompt(model, tmp_path / "p", {"base_model": "tiny", "base_fingerprint": base.fingerprint,
                                        "prompt_length": 7})
    with pytest.raises(SoftpromptError, match="shape"):
        load_prompt(load_base("tiny"), tmp_path / "p")
