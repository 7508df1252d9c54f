"""Domain transfer (paper, section 5): a prompt trained on one task, evaluated zero-shot on related ones.

QQP <-> MRPC share a label space under different names, so predictions are rewritten into the target's
label strings before scoring (prompt-tuning's `qqp_to_mrpc` / `mrpc_to_qqp` postprocessors); QA tasks
(SQuAD -> the MRQA out-of-domain sets) share free-text answers and need no mapping. The source task's own
validation split is evaluated too, so both sides are reported like the paper's Tables 1 and 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, write_json, write_jsonl
from softprompt.tasks.base import Task

# (source, target) -> source label -> target label
LABEL_MAPS: dict[tuple[str, str], dict[str, str]] = {
    ("qqp", "mrpc"): {"duplicate": "equivalent", "not_duplicate": "not_equivalent"},
    ("mrpc", "qqp"): {"equivalent": "duplicate", "not_equivalent": "not_duplicate"},
}


def label_map(source: Task, target: Task) -> dict[str, str]:
    """How the source task's outputs read as the target task's labels ({} when they share outputs)."""
    if (source.name, target.name) in LABEL_MAPS:
        return LABEL_MAPS[(source.name, target.name)]
    if source.label_names == target.label_names:
        return {}
    if source.is_classification or target.is_classification:
        raise SoftpromptError(f"cannot transfer {source.name} -> {target.name}: their label spaces differ "
                              f"({source.label_names} vs {target.label_names}); known pairs: "
                              f"{', '.join(f'{a}->{b}' for a, b in LABEL_MAPS)}, or QA (squad -> MRQA sets)")
    return {}


def map_predictions(predictions: Sequence[str], mapping: Mapping[str, str]) -> list[str]:
    """Rewrite exact source labels; anything else (not a label in either space) stays and scores as wrong."""
    return [mapping.get(p, p) for p in predictions]


def markdown_table(report: dict[str, Any]) -> str:
    rows = [report["source"], *report["targets"]]
    metric_names = sorted({m for r in rows for m, v in r["metrics"].items() if isinstance(v, float)})
    lines = [f"# Domain transfer from {report['source']['task']}", "",
             "| task | role | examples | " + " | ".join(metric_names) + " |",
             "|---|---|---:|" + "---:|" * len(metric_names)]
    for r in rows:
        values = [f"{r['metrics'][m]:.1f}" if m in r["metrics"] else "" for m in metric_names]
        lines.append(f"| {r['task']} | {r['role']} | {r['metrics']['num_examples']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def run_transfer(prompt: str | Path, source_task: str, targets: Sequence[tuple[str, str | Path | None]],
                 output: str | Path, source_data: str | Path | None = None, model: str | None = None,
                 mode: str = "generate", batch_size: int = 32, limit: int | None = None,
                 skip_source: bool = False, progress: bool = True, device: str | None = None,
                 dtype: str | None = None) -> dict[str, Any]:
    """Evaluate `prompt` on the source task and on each (target task, data dir); write transfer.json/.md and
    per-task predictions into the directory `output`. The model runs on
    `softprompt.device.choose_placement(device, dtype)`, which transfer.json records."""
    from softprompt.device import choose_placement
    from softprompt.evaluation import predict, rank_predictions, score, trained_encoding
    from softprompt.models import load_base
    from softprompt.prompt import load_prompt, read_meta
    from softprompt.tasks import get_task, load_examples

    if not targets:
        raise SoftpromptError("name at least one --target-task")
    meta = read_meta(prompt)
    taskless = bool(meta.get("train", {}).get("taskless", False))
    source = get_task(source_task, taskless=taskless)
    if meta.get("task") and meta["task"] != source.name:
        raise SoftpromptError(f"{prompt}: prompt was trained on {meta['task']!r}, not {source.name!r}; "
                              f"pass --source-task {meta['task']}")
    plan = [(get_task(name, taskless=taskless), data) for name, data in targets]
    maps = {t.name: label_map(source, t) for t, _ in plan}  # fail before loading any model
    if mode == "rank" and not source.is_classification:
        raise SoftpromptError(f"{source.name}: rank classification needs label strings; use --mode generate")
    base = load_base(model or meta["base_model"], placement=choose_placement(device, dtype))
    net, _ = load_prompt(base, prompt)
    encoding = trained_encoding(base.tokenizer, meta)
    results: list[dict[str, Any]] = []
    files: dict[str, list[dict[str, Any]]] = {}

    def run(task: Task, data: str | Path | None, role: str, mapping: Mapping[str, str]) -> None:
        examples = load_examples(task, data, "validation", limit=limit)
        if not examples:
            raise SoftpromptError(f"{task.name}: the validation split is empty")
        if mode == "rank":  # the prompt answers in the source's labels
            raw = rank_predictions(net, encoding, examples, source.label_names, batch_size, progress)
        else:
            gen_task = task if task.max_target_length >= source.max_target_length else source
            raw = predict(net, encoding, gen_task, examples, "generate", batch_size, progress)
        preds = map_predictions(raw, mapping)
        metrics = score(task, preds, examples)
        results.append({"task": task.name, "role": role, "metrics": metrics})
        files[f"{role}-{task.name}"] = [{**e.to_json(), "output": r, "prediction": p}
                                        for e, r, p in zip(examples, raw, preds)]

    if not skip_source:
        run(source, source_data, "source", {})
    for task, data in plan:
        run(task, data, "target", maps[task.name])
    report = {"prompt": str(prompt), "base_model": base.name, "mode": mode, **base.placement.to_json(),
              "source": results[0] if not skip_source else {"task": source.name, "role": "source",
                                                            "metrics": {"num_examples": 0}},
              "targets": results[0 if skip_source else 1:],
              "label_maps": {k: v for k, v in maps.items() if v}}
    with atomic_dir(output) as tmp:
        write_json(tmp / "transfer.json", report)
        (tmp / "transfer.md").write_text(markdown_table(report), encoding="utf-8")
        for name, rows in files.items():
            write_jsonl(tmp / f"{name}.predictions.jsonl", rows)
    return report
