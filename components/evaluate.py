"""Evaluation: every prompt, their ensemble, and the best prompt as the registration candidate."""


from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_prompts(task: str, data: Input[Dataset], data_fingerprint: str, prompts: Input[list[Model]],
                     base: Input[Model], mode: str, split: str, profile: str, cache_epoch: str,
                     metrics: Output[Metrics], confusion: Output[ClassificationMetrics], best_prompt: Output[Model],
                     evaluation: Output[Dataset], report: Output[HTML]) -> float:
    """Evaluate the prompts on `split` of the validated data `data` (imported by its content-addressed URI,
    checked against `data_fingerprint`) on `base`, the base they were trained on (lm-adapt's output: a pod
    sees only the artifacts it declares, so the base comes as an input, never as a path another pod
    recorded). Returns the best prompt's main metric (the promotion gate's input). The report (HTML) shows
    each prompt's score beside the ensemble's, the confusion matrix and twenty wrong predictions.
    `cache_epoch` is read by KFP's cache key only (see preflight)."""
    import os

    from softprompt.io import copy_dir
    from softprompt.pipeline_steps import (
        check_fingerprint,
        evaluate_step,
        evaluation_reports,
        log_metrics,
        resolve_model,
        write_artifact_file,
    )
    from softprompt.report import non_label_share

    check_fingerprint(data.path, data_fingerprint)
    evaluate_step(task, data.path, [p.path for p in prompts], evaluation.path, mode=mode, split=split,
                  model=resolve_model(base.path), profile=profile or None)
    result = evaluation_reports(evaluation.path, report.path)
    main = result["main_metric"]
    values = {**result, **{f"prompt_{i}_{main}": v for i, v in enumerate(result["per_prompt"])},
              **{f"ensemble_{k}": v for k, v in (result.get("ensemble") or {}).items()}}
    if "confusion_matrix" in result:
        cm = result["confusion_matrix"]
        confusion.log_confusion_matrix(cm["labels"], cm["matrix"])
        values["non_label_share"] = non_label_share(cm)
    log_metrics(metrics, values)
    write_artifact_file(confusion)
    copy_dir(result["prompt_dir"], best_prompt.path)
    best_prompt.metadata.update({"task": task, main: result[main], "data_fingerprint": data_fingerprint,
                                 "metrics_file": os.path.join(evaluation.path, "metrics.json")})
    return float(result[main])
