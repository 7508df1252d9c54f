"""Evaluation: every prompt, their ensemble, and the best prompt as the registration candidate."""


from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_prompts(task: str, data: str, data_fingerprint: str, prompts: Input[list[Model]], mode: str, split: str,
                     metrics: Output[Metrics], confusion: Output[ClassificationMetrics], best_prompt: Output[Model],
                     evaluation: Output[Dataset]) -> float:
    """Evaluate the prompts on `split` of the validated data at `data` (content-addressed, checked against
    `data_fingerprint`); returns the best prompt's main metric (the promotion gate's input)."""
    import json
    import os
    import tempfile

    from softprompt.io import copy_dir
    from softprompt.pipeline_steps import evaluate_step, fetch_validated

    local = fetch_validated(data, data_fingerprint, tempfile.mkdtemp())
    result = evaluate_step(task, local, [p.path for p in prompts], evaluation.path, mode=mode, split=split)
    main = result["main_metric"]
    for key, value in result.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(key, value)
    for i, value in enumerate(result["per_prompt"]):
        metrics.log_metric(f"prompt_{i}_{main}", value)
    for key, value in (result.get("ensemble") or {}).items():
        metrics.log_metric(f"ensemble_{key}", value)
    if "confusion_matrix" in result:
        cm = result["confusion_matrix"]
        confusion.log_confusion_matrix(cm["labels"], cm["matrix"])
    # The UI reads these two from metadata; the files are for kfp.local, whose cache counts an output artifact
    # without a file as missing and would never reuse this step.
    for artifact in (metrics, confusion):
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
        with open(artifact.path, "w", encoding="utf-8") as f:
            json.dump(artifact.metadata, f)
    copy_dir(result["prompt_dir"], best_prompt.path)
    best_prompt.metadata.update({"task": task, main: result[main], "data_fingerprint": data_fingerprint,
                                 "metrics_file": os.path.join(evaluation.path, "metrics.json")})
    return float(result[main])
