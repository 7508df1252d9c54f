"""Plain PEFT loads the prompt `dvc repro` trained and generates what `softprompt evaluate` predicted
(docs/training.md: "`adapter_config.json` + `adapter_model.safetensors` load with plain PEFT")."""

from __future__ import annotations

import json

import torch
from peft import PeftModel, PromptTuningConfig

from clients.conftest import TASK
from softprompt.evaluation import max_new_tokens, trained_encoding
from softprompt.models import load_base
from softprompt.tasks import get_task


def test_peft_from_pretrained_and_generate_match_evaluate(project):
    base = load_base("tiny")  # the base the prompt was trained on (its fingerprint is checked by softprompt)
    model = PeftModel.from_pretrained(base.model, str(project.root / f"prompts/{TASK}"))
    assert isinstance(model.peft_config["default"], PromptTuningConfig)
    assert model.peft_config["default"].num_virtual_tokens == 4  # the fixture profile's prompt length

    rows = [json.loads(line) for line in (project.root / f"metrics/{TASK}.predictions.jsonl").read_text().splitlines()]
    batch = base.tokenizer([r["inputs"] for r in rows], padding=True, return_tensors="pt")
    new_tokens = max_new_tokens(get_task(TASK), trained_encoding(base.tokenizer, {}))
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                             num_beams=1, max_new_tokens=new_tokens)
    texts = [t.strip() for t in base.tokenizer.batch_decode(out, skip_special_tokens=True)]
    assert len(texts) == len(rows) == 8
    assert texts == [r["prediction"] for r in rows]
