import json
import shutil

import pytest
import torch
from conftest import SHARED, needs_shared

from softprompt.errors import SoftpromptError
from softprompt.models import embedding_fingerprint, load_base, sentinel_id


def test_tiny_is_t5_1_1_style_and_identical_in_every_load():
    a, b = load_base("tiny"), load_base("tiny")
    cfg = a.model.config
    # T5 1.1: gated-gelu, an output layer of its own (untied), no decoder-output rescaling.
    assert cfg.feed_forward_proj == "gated-gelu" and cfg.scale_decoder_outputs is False
    assert a.model.get_input_embeddings().weight.data_ptr() != a.model.lm_head.weight.data_ptr()
    assert not torch.equal(a.model.get_input_embeddings().weight, a.model.lm_head.weight)
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("sha256:")
    assert torch.equal(a.model.lm_head.weight, b.model.lm_head.weight)
    assert sentinel_id(a.tokenizer) == a.tokenizer.convert_tokens_to_ids("<extra_id_0>")


def test_fingerprint_changes_with_the_embedding_table():
    base = load_base("tiny")
    before = base.fingerprint
    with torch.no_grad():
        base.model.get_input_embeddings().weight[5, 0] += 1.0
    assert embedding_fingerprint(base.model) != before


def test_saved_checkpoint_directory_loads_with_same_fingerprint(tmp_path):
    base = load_base("tiny")
    base.model.save_pretrained(tmp_path / "m")
    base.tokenizer.save_pretrained(tmp_path / "m")
    again = load_base(str(tmp_path / "m"))
    assert again.fingerprint == base.fingerprint
    assert torch.equal(again.model.lm_head.weight, base.model.lm_head.weight)  # still untied after reload
    x, y = torch.tensor([[5, 6, 7, 1]]), torch.tensor([[8, 9, 1]])
    assert torch.allclose(again.model(input_ids=x, labels=y).logits, base.model(input_ids=x, labels=y).logits)


def test_bad_model_sources_fail_with_a_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoftpromptError, match="no config.json"):
        load_base(str(tmp_path / "empty"))
    with pytest.raises(SoftpromptError, match="no such model directory"):
        load_base(str(tmp_path / "missing"))
    with pytest.raises(SoftpromptError, match="cannot load model"):
        load_base("google/definitely-not-cached-t5")  # HF_HUB_OFFLINE=1: fails at once


@needs_shared
def test_real_t5_sentencepiece_vocabulary_loads(tmp_path):
    """google/t5-*-lm-adapt ship spiece.model without tokenizer.json; it must load in our pinned env."""
    from transformers import AutoTokenizer

    shutil.copy(SHARED / "models/t5-spiece/spiece.model", tmp_path / "spiece.model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 32100
    ids = tok("rte hypothesis: hi").input_ids
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == "rte hypothesis: hi"
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 32099
