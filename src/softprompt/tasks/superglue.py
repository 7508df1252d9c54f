"""The SuperGLUE tasks, formatted as T5's `super_glue_*_v102` tasks (`t5/data/glue_utils.py`).

Every string follows T5's preprocessors (`t5/data/preprocessors.py`: `glue`, `record`, `wsc_simple`),
quirks included: keys in sorted order when T5 gives no feature names (COPA reads "choice1: … choice2: …
premise: … question: …"), COPA targets "choice1"/"choice2", HTML markup stripped from MultiRC, ReCoRD
expanded to one row per answer, WSC in the simple generative form (the target is the referent's text).

Local files in the official SuperGLUE jsonl layout are first normalised to the Hub (TFDS / `datasets`
`super_glue`) schema, so both sources format identically: MultiRC paragraphs become one row per answer,
ReCoRD passages one row per query, WSC's `target` is flattened and fixed as in `wsc.fixed`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from softprompt import metrics
from softprompt.errors import SoftpromptError
from softprompt.tasks.base import UNK_TARGET, Example, Task, glue_formatter, register

SUPERGLUE_FILES = {"train": ("train.jsonl",), "validation": ("val.jsonl", "dev32.jsonl"), "test": ("test.jsonl",)}
HUB = "aps/super_glue"
BOOL_LABELS = ("False", "True")


# ---------------------------------------------------------------- metrics


def accuracy_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    return {"accuracy": metrics.accuracy(predictions, [e.targets for e in examples])}


def cb_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    targets = [e.targets for e in examples]
    return {"f1": metrics.macro_f1(predictions, targets, CB.label_names),
            "accuracy": metrics.accuracy(predictions, targets)}


def multirc_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """F1a over all answer options and exact match per question (T5: multirc_f1_over_all_answers, all_match)."""
    targets = [e.targets for e in examples]
    return {"f1a": metrics.f1_with_invalid(predictions, targets, positive="True", negative="False"),
            "exact_match": metrics.group_exact_match(predictions, targets, [e.meta["group"] for e in examples])}


def record_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """SQuAD EM/F1, max over a query's answers, counting each query once (rows repeat per answer)."""
    preds, kept = metrics.deduplicate(predictions, examples, [e.meta["group"] for e in examples])
    return metrics.squad(preds, [e.meta["answers"] for e in kept])


def wsc_metric(predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
    """Accuracy of T5's `wsc_simple` output (1 named the candidate, 0 named another, -1 empty) against the
    label (is the candidate the referent): an empty answer is wrong on every row."""
    pairs = [(p, e) for p, e in zip(predictions, examples) if e.meta.get("label") is not None]
    if not pairs:
        raise SoftpromptError("wsc: no labeled rows to score; evaluate the validation split")
    hits = [metrics.wsc_simple(p, e.targets) == int(e.meta["label"]) for p, e in pairs]
    return {"accuracy": 100.0 * sum(hits) / len(hits)}


# ---------------------------------------------------------------- local layout -> Hub schema


def flatten_multirc(row: dict[str, Any], _: int) -> list[dict[str, Any]]:
    """A MultiRC paragraph (official jsonl) -> one Hub row per answer option; Hub rows pass through."""
    if "paragraph" in row:
        return [row]
    passage = row["passage"]
    out = []
    for question in passage["questions"]:
        for answer in question["answers"]:
            label = answer.get("label")
            out.append({"paragraph": passage["text"], "question": question["question"], "answer": answer["text"],
                        "label": -1 if label is None else int(bool(label)),
                        "idx": {"paragraph": row["idx"], "question": question["idx"], "answer": answer["idx"]}})
    return out


def flatten_record(row: dict[str, Any], _: int) -> list[dict[str, Any]]:
    """A ReCoRD passage (official jsonl) -> one Hub row per query, as `datasets`' super_glue builder does:
    entities are the sorted set of entity strings, answers the sorted set of answer strings."""
    if "query" in row:
        return [row]
    passage = row["passage"]
    text = passage["text"]
    entities = sorted({text[e["start"]:e["end"] + 1] for e in passage["entities"]})
    return [{"passage": text, "query": qa["query"], "entities": entities,
             "answers": sorted({a["text"] for a in qa.get("answers", [])}),
             "idx": {"passage": row["idx"], "query": qa["idx"]}} for qa in row["qas"]]


def flatten_wsc(row: dict[str, Any], _: int) -> list[dict[str, Any]]:
    """A WSC row (official jsonl, spans under `target`) -> the Hub `wsc.fixed` row."""
    if "target" not in row:
        return [row]
    flat = {"text": row["text"], **{k: row["target"][k] for k in
                                    ("span1_index", "span2_index", "span1_text", "span2_text")}}
    flat["idx"] = row["idx"]
    flat["label"] = row.get("label", -1)
    return [fix_wsc_spans(flat)]


def fix_wsc_spans(ex: dict[str, Any]) -> dict[str, Any]:
    """`wsc.fixed` (TFDS / `datasets` `_fix_wst`): repair span texts that are not substrings of the text."""
    for key in ("span1", "span2"):
        text, index = ex[f"{key}_text"], ex[f"{key}_index"]
        if text in ex["text"] or text in ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin"):
            continue  # already fine, or unfixable (intervening words)
        if "theyscold" in text:
            ex["span2_index"] = 10  # (the original also "fixes" the text but discards the result)
        words = ex["text"].split()
        first = words[index] if 0 <= index < len(words) else text
        text = (text[0].lower() if first[0].islower() else text[0].upper()) + text[1:]
        ex[f"{key}_text"] = text.rstrip(".").replace("\n", " ")
    return ex


# ---------------------------------------------------------------- formatters


def multirc_formatter(row: dict[str, Any], task: Task) -> list[Example]:
    """T5 `glue` with feature names (question, answer, paragraph), then HTML markup removed."""
    parts = ["question:", row["question"], "answer:", row["answer"], "paragraph:", row["paragraph"]]
    inputs = re.sub(r"<(/)?b>", "", task.join(parts).replace("<br>", " "))
    idx = row["idx"]
    return [Example(idx=idx, inputs=inputs, targets=task.label_text(row.get("label")),
                    meta={"group": (idx["paragraph"], idx["question"])})]


def record_passage(passage: str) -> str:
    """T5's ReCoRD passage cleanup: "@highlight" lines become sentences."""
    passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", passage)
    return passage.replace("\n@highlight\n", ". ")


def record_formatter(row: dict[str, Any], task: Task) -> list[Example]:
    """T5 `record`: one row per answer (each answer a target), `<unk>` when there are none."""
    parts = ["query:", row["query"], "entities:", ", ".join(row["entities"]), "passage:",
             record_passage(row["passage"])]
    inputs = task.join(parts)
    answers = list(row.get("answers") or [])
    idx = row["idx"]
    meta = {"group": (idx["passage"], idx["query"]), "answers": answers}
    return [Example(idx=idx, inputs=inputs, targets=t, meta=meta) for t in (answers or [UNK_TARGET])]


# Two WSC texts T5 special-cases: the span index points at the wrong word.
WSC_SPECIAL = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite loud. '
    '"Good for him," he said. ':
        'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite '
        'loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in an '
    'iron safe . Some day they might want to use it , but really for now, what more could they wish for?':
        'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in an '
        'iron safe . Some day they might want to use X , but really for now, what more could they wish for?',
}


def wsc_blanked(row: dict[str, Any]) -> str:
    """T5 `_wsc_inputs`: the text with the pronoun (word span2_index, split on single spaces) replaced by X."""
    text = row["text"]
    if text in WSC_SPECIAL:
        return WSC_SPECIAL[text]
    words = text.split(" ")
    i = int(row["span2_index"])
    if not 0 < i < len(words) or words[i] != row["span2_text"]:
        raise SoftpromptError(f"span2_index {i} does not point at span2_text {row['span2_text']!r}; "
                              "fix the row's span fields")
    return " ".join([" ".join(words[:i]), "X", " ".join(words[i + 1:])])


def wsc_formatter(row: dict[str, Any], task: Task) -> list[Example]:
    """T5 `wsc_simple`: "wsc: … *pronoun* …" -> the candidate referent's text (span1_text)."""
    pronoun = f" *{row['span2_text']}* "
    inputs = task.join([re.sub(r" X ", lambda _: pronoun, wsc_blanked(row))])
    label = row.get("label")
    label = None if label is None or label == -1 else bool(label)
    return [Example(idx=row.get("idx"), inputs=inputs, targets=row["span1_text"], meta={"label": label})]


def wsc_is_referent(row: dict[str, Any]) -> bool:
    """T5 trains WSC on the rows whose candidate is the referent (`correct_referent_only=True`)."""
    label = row.get("label")
    return label not in (None, -1) and bool(label)


# ---------------------------------------------------------------- the tasks


def sorted_features(*names: str) -> tuple[str, ...]:
    """T5's glue preprocessor sorts the feature keys; listing them explicitly keeps extra local fields out."""
    return tuple(sorted(names))


BOOLQ = register(Task(
    name="boolq",
    description="SuperGLUE BoolQ: answer a yes/no question about a passage.",
    fields={"question": "str", "passage": "str", "idx": "int", "label": "label"},
    formatter=glue_formatter(sorted_features("question", "passage")),
    metric_fn=accuracy_metric,
    main_metric="accuracy",
    label_names=BOOL_LABELS,
    files=SUPERGLUE_FILES,
    hub=(HUB, "boolq"),
    prefix="boolq",
    design_prompt="Read the passage and answer the question with True or False.",
    text_fields=("question", "passage"),
))

CB = register(Task(
    name="cb",
    score_metrics=metrics.SUPERGLUE_METRICS["cb"],
    description="SuperGLUE CommitmentBank: does the premise entail, contradict or neither the hypothesis?",
    fields={"premise": "str", "hypothesis": "str", "idx": "int", "label": "label"},
    formatter=glue_formatter(sorted_features("premise", "hypothesis")),
    metric_fn=cb_metric,
    main_metric="f1",
    label_names=("entailment", "contradiction", "neutral"),
    files=SUPERGLUE_FILES,
    hub=(HUB, "cb"),
    prefix="cb",
    design_prompt="Does the premise entail or contradict the hypothesis? Answer entailment, contradiction or "
                  "neutral.",
    text_fields=("premise", "hypothesis"),
))

COPA = register(Task(
    name="copa",
    description="SuperGLUE COPA: which choice is the cause/effect of the premise?",
    fields={"premise": "str", "choice1": "str", "choice2": "str", "question": "str", "idx": "int",
            "label": "label"},
    formatter=glue_formatter(sorted_features("premise", "choice1", "choice2", "question")),
    metric_fn=accuracy_metric,
    main_metric="accuracy",
    label_names=("choice1", "choice2"),
    files=SUPERGLUE_FILES,
    hub=(HUB, "copa"),
    prefix="copa",
    design_prompt="Which choice is the cause or effect asked for by the question? Answer choice1 or choice2.",
    text_fields=("premise", "choice1", "choice2"),
))

MULTIRC = register(Task(
    name="multirc",
    score_metrics=metrics.SUPERGLUE_METRICS["multirc"],
    description="SuperGLUE MultiRC: is this answer to a question about the paragraph true? (one row per answer)",
    fields={"paragraph": "str", "question": "str", "answer": "str", "idx": "dict", "label": "label"},
    formatter=multirc_formatter,
    metric_fn=multirc_metric,
    main_metric="f1a",
    label_names=BOOL_LABELS,
    files=SUPERGLUE_FILES,
    hub=(HUB, "multirc"),
    prefix="multirc",
    design_prompt="Is the answer to the question about the paragraph correct? Answer True or False.",
    text_fields=("paragraph", "question", "answer"),
    normalize_row=flatten_multirc,
    group_key="group",
))

RECORD = register(Task(
    name="record",
    score_metrics=metrics.SUPERGLUE_METRICS["record"],
    description="SuperGLUE ReCoRD: which entity fills @placeholder in the query? (one row per answer)",
    fields={"passage": "str", "query": "str", "entities": "list", "answers": "list", "idx": "dict"},
    formatter=record_formatter,
    metric_fn=record_metric,
    main_metric="f1",
    files=SUPERGLUE_FILES,
    hub=(HUB, "record"),
    prefix="record",
    design_prompt="Which entity from the list fills @placeholder in the query?",
    max_target_length=32,
    text_fields=("passage", "query"),
    normalize_row=flatten_record,
    group_key="group",
))

RTE = register(Task(
    name="rte",
    description="SuperGLUE RTE: does the premise entail the hypothesis?",
    fields={"premise": "str", "hypothesis": "str", "idx": "int", "label": "label"},
    formatter=glue_formatter(sorted_features("premise", "hypothesis")),
    metric_fn=accuracy_metric,
    main_metric="accuracy",
    label_names=("entailment", "not_entailment"),
    files=SUPERGLUE_FILES,
    hub=(HUB, "rte"),
    prefix="rte",
    design_prompt="Does the premise entail the hypothesis? Answer entailment or not_entailment.",
    text_fields=("premise", "hypothesis"),
))

WIC = register(Task(
    name="wic",
    description="SuperGLUE WiC: is the word used with the same sense in both sentences?",
    fields={"word": "str", "sentence1": "str", "sentence2": "str", "start1": "int", "start2": "int",
            "end1": "int", "end2": "int", "idx": "int", "label": "label"},
    # T5 names the features (ignoring the start/end offsets), so this order is not sorted.
    formatter=glue_formatter(("sentence1", "sentence2", "word")),
    metric_fn=accuracy_metric,
    main_metric="accuracy",
    label_names=BOOL_LABELS,
    files=SUPERGLUE_FILES,
    hub=(HUB, "wic"),
    prefix="wic",
    design_prompt="Is the word used with the same meaning in both sentences? Answer True or False.",
    text_fields=("word", "sentence1", "sentence2"),
    # The official WiC jsonl carries a format marker ("version": 1.1) that is not data; the Hub has none.
    normalize_row=lambda row, i: [{k: v for k, v in row.items() if k != "version"}],
))

WSC = register(Task(
    name="wsc",
    description="SuperGLUE WSC (T5's simple form): name the referent of the *marked* pronoun.",
    fields={"text": "str", "span1_index": "int", "span2_index": "int", "span1_text": "str", "span2_text": "str",
            "idx": "int", "label": "label"},
    formatter=wsc_formatter,
    metric_fn=wsc_metric,
    main_metric="accuracy",
    files=SUPERGLUE_FILES,
    hub=(HUB, "wsc.fixed"),
    prefix="wsc:",
    design_prompt="Who or what does the pronoun between asterisks refer to?",
    max_target_length=16,
    text_fields=("text", "span1_text", "span2_text"),
    normalize_row=flatten_wsc,
    train_filter=wsc_is_referent,
))
