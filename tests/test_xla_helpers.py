"""softprompt.xla's pieces that need no torch_xla: the static-shape collator and the batch split. The XLA path
itself (launch, Trainer on xla:0, bf16) runs in tests/xla/ under `make test-xla`."""

from __future__ import annotations

import pytest
import torch

from softprompt import xla
from softprompt.errors import SoftpromptError
from softprompt.models import load_base


def rows(lengths: list[tuple[int, int]]) -> list[dict]:
    return [{"input_ids": list(range(3, 3 + s)), "attention_mask": [1] * s, "labels": list(range(5, 5 + t))}
            for s, t in lengths]


def test_static_collator_gives_one_shape_for_every_batch():
    tokenizer = load_base("tiny").tokenizer
    collate = xla.StaticSeq2SeqCollator(tokenizer, source_length=12, target_length=5)
    first, second = collate(rows([(3, 1), (7, 4)])), collate(rows([(12, 5)]))
    for batch in (first, second):
        assert batch["input_ids"].shape[1] == 12 and batch["labels"].shape[1] == 5
        assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert first["input_ids"][0, :3].tolist() == [3, 4, 5]
    assert (first["input_ids"][0, 3:] == tokenizer.pad_token_id).all()
    assert first["attention_mask"][0].tolist() == [1] * 3 + [0] * 9
    assert first["labels"].tolist() == [[5, -100, -100, -100, -100], [5, 6, 7, 8, -100]]
    assert first["labels"].dtype == torch.long


def test_static_collator_refuses_rows_longer_than_the_static_lengths():
    collate = xla.StaticSeq2SeqCollator(load_base("tiny").tokenizer, source_length=4, target_length=3)
    with pytest.raises(SoftpromptError, match="6 input / 2 target tokens, over the static lengths 4 / 3"):
        collate(rows([(6, 2)]))


@pytest.mark.skipif(xla.available(), reason="torch_xla is installed here")
def test_without_torch_xla_nothing_changes():
    assert not xla.available() and xla.device_type() is None and xla.world_size() == 1
    assert xla.trainer_overrides() == {} and xla.compilations() is None
    assert type(xla.collator(load_base("tiny").tokenizer, 8, 4)).__name__ == "DataCollatorForSeq2Seq"
    assert xla.per_device_batch(32, 4) == 8
    with pytest.raises(SoftpromptError, match="batch_size: 32 does not split .* use a multiple of 3"):
        xla.per_device_batch(32, 3)

    @xla.on_every_chip
    def add(a: int, b: int = 0) -> int:
        return a + b

    assert add(2, b=3) == 5  # runs in this process
