"""Extractive QA for the paper's domain-transfer experiments: SQuAD in-domain, MRQA 2019 out-of-domain sets.

Formatted as T5's `squad` preprocessor (`t5/data/preprocessors.py`) and the prompt-tuning repository's MRQA
tasks (`prompt_tuning/data/qa.py`, `preprocess_tsv_to_qa`): "question: … context: …" with punctuation
padded by spaces, the first detected answer as target, every gold answer kept for SQuAD EM/F1.

Local files are MRQA shared-task jsonl(.gz): a header line, then one context per line with its `qas`; each
question becomes one Hub-schema row `{id, context, question, answer, answers}`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from softprompt import metrics
from softprompt.tasks.base import Example, Task, register

_WS = re.compile(r"[\t\n\f\r ]+")  # RE2's \s, which T5's TensorFlow regexes use
_NON_WORD = re.compile(r"(\W)", re.ASCII)  # RE2's \W is ASCII-only: "é" is padded too
QA_FIELDS = {"id": "str", "context": "str", "question": "str", "answer": "str", "answers": "list"}


def pad_punctuation(text: str) -> str:
    """T5 `_pad_punctuation`: a space around every non-word character, whitespace collapsed."""
    return _WS.sub(" ", _NON_WORD.sub(r" \1 ", text))


def string_join(parts: Sequence[str]) -> str:
    """T5 `_string_join`: join on spaces, collapsing runs of whitespace."""
    return _WS.sub(" ", " ".join(parts))


def normalize_whitespace(text: str) -> str:
    """prompt-tuning's `mrqa_to_tsv`: every whitespace run (newlines, tabs) becomes one space."""
    return re.sub(r"\s+", " ", text)


def qa_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    return metrics.squad(predictions, [e.meta["answers"] for e in examples])


def qa_formatter(row: dict[str, Any], task: Task) -> list[Example]:
    question, context = pad_punctuation(row["question"]), pad_punctuation(row["context"])
    answers = [pad_punctuation(a) for a in row["answers"]]
    target = pad_punctuation(row.get("answer") or (row["answers"][0] if row["answers"] else ""))
    parts = ["question:", question, "context:", context]
    if task.prefix and not task.taskless:
        parts = [task.prefix, *parts]
    return [Example(idx=row["id"], inputs=string_join(parts), targets=target, meta={"answers": answers})]


def mrqa_rows(subset: str | None = None):
    """Row normaliser for MRQA jsonl lines, Hub `mrqa-workshop/mrqa` rows (kept when `subset` matches) and
    Hub `rajpurkar/squad` rows."""

    def normalize(row: dict[str, Any], _: int) -> list[dict[str, Any]]:
        if "header" in row:
            return []  # the MRQA file's first line
        if "qas" in row:  # MRQA jsonl: one context, many questions
            context = normalize_whitespace(row["context"])
            return [mrqa_question(context, qa) for qa in row["qas"]]
        if "subset" in row:  # Hub mrqa
            if subset is not None and row["subset"] != subset:
                return []
            detected = row.get("detected_answers") or {}
            first = (detected.get("text") or [None])[0] if isinstance(detected, dict) else None
            return [{"id": row["qid"], "context": row["context"], "question": row["question"],
                     "answer": first or row["answers"][0], "answers": list(row["answers"])}]
        answers = row["answers"]
        if isinstance(answers, dict):  # Hub squad: {"text": [...], "answer_start": [...]}
            answers = list(answers["text"])
        return [{"id": row["id"], "context": row["context"], "question": row["question"],
                 "answer": row.get("answer") or (answers[0] if answers else ""), "answers": list(answers)}]

    return normalize


def mrqa_question(context: str, qa: dict[str, Any]) -> dict[str, Any]:
    answers = [normalize_whitespace(a) for a in qa["answers"]]
    detected = qa.get("detected_answers") or []
    answer = normalize_whitespace(detected[0]["text"]) if detected else (answers[0] if answers else "")
    return {"id": qa.get("qid") or qa.get("id"), "context": context, "question": normalize_whitespace(qa["question"]),
            "answer": answer, "answers": answers}


SQUAD = register(Task(
    name="squad",
    description="SQuAD v1.1 extractive QA (MRQA in-domain); source task for QA domain transfer.",
    fields=QA_FIELDS,
    formatter=qa_formatter,
    metric_fn=qa_metric,
    main_metric="f1",
    files={"train": ("SQuAD-train.jsonl.gz", "train/SQuAD.jsonl.gz", "SQuAD-train.jsonl"),
           "validation": ("SQuAD.jsonl.gz", "SQuAD.jsonl", "dev/SQuAD.jsonl.gz")},
    hub=("rajpurkar/squad", None),
    design_prompt="Answer the question with a span copied from the context.",
    max_target_length=32,
    id_field="id",
    text_fields=("context", "question"),
    normalize_row=mrqa_rows(),
))

# The MRQA 2019 out-of-domain dev sets the paper transfers SQuAD prompts to (its Table 2).
MRQA_OUT_OF_DOMAIN = {
    "bioasq": ("BioASQ", "biomedical"),
    "drop": ("DROP", "Wikipedia, discrete reasoning"),
    "duorc": ("DuoRC.ParaphraseRC", "movie plots"),
    "race": ("RACE", "English exams"),
    "relation_extraction": ("RelationExtraction", "Wikidata relations"),
    "textbookqa": ("TextbookQA", "science textbooks"),
}

for _name, (_file, _domain) in MRQA_OUT_OF_DOMAIN.items():
    register(Task(
        name=_name,
        description=f"MRQA out-of-domain {_file} ({_domain}); evaluation only.",
        fields=QA_FIELDS,
        formatter=qa_formatter,
        metric_fn=qa_metric,
        main_metric="f1",
        files={"validation": (f"{_file}.jsonl.gz", f"{_file}.jsonl", f"dev/{_file}.jsonl.gz")},
        hub=("mrqa-workshop/mrqa", None),
        hub_splits={"validation": "test"},  # the Hub puts the out-of-domain dev sets in its test split
        design_prompt="Answer the question with a span copied from the context.",
        max_target_length=32,
        id_field="id",
        text_fields=("context", "question"),
        normalize_row=mrqa_rows(_file),
    ))
