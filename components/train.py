"""Prompt training: one soft prompt per seed (the pipeline fans out over seeds for an ensemble)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_prompt(task: str, data: Input[Dataset], data_fingerprint: str, base: Input[Model], profile: str,
                 prompt_length: int, init: str, steps: int, batch_size: int, learning_rate: float, seed: int,
                 checkpoint_root: str, cache_epoch: str, prompt: Output[Model], metrics: Output[Metrics],
                 curves: Output[HTML]) -> float:
    """Train a soft prompt on the validated data `data` (imported by its content-addressed URI; its files must
    hash to `data_fingerprint`); returns its validation main metric. Checkpoints go under `checkpoint_root`
    (durable storage under the pipeline root) keyed by the run's content, so a retried step resumes. The
    prompt's `runs/` holds its TensorBoard logs; `curves` (HTML) plots the training loss and the validation
    score over steps. `cache_epoch` is read by KFP's cache key only (see preflight)."""
    from softprompt.config import load_params
    from softprompt.pipeline_steps import base_reference, check_fingerprint, log_metrics, train_reports, train_step
    from softprompt.trainjob import placement, run_train_job

    overrides = dict(prompt_length=prompt_length, init=init, steps=steps, batch_size=batch_size, lr=learning_rate)
    if placement(load_params(profile or None)):  # params.yaml cluster: more than one node or GPU: a TrainJob
        meta = run_train_job(task, data.uri, data_fingerprint, base.uri, prompt.path, prompt.uri + ".trainjob",
                             profile or None, seed, overrides)
    else:
        check_fingerprint(data.path, data_fingerprint)
        meta = train_step(task, data.path, base.path, prompt.path, profile or None,
                          base_name=base_reference(base.path, base.uri), checkpoint_root=checkpoint_root,
                          data_meta={"fingerprint": data_fingerprint, "location": data.uri}, seed=seed, **overrides)
    log_metrics(metrics, train_reports(prompt.path, curves.path))
    validation = meta["metrics"]["validation"]
    prompt.metadata.update({"task": task, "seed": seed, "base_model": meta["base_model"],
                            "base_fingerprint": meta["base_fingerprint"], "prompt_length": meta["prompt_length"],
                            "steps": meta["steps_trained"], "data_fingerprint": data_fingerprint})
    return float(validation.get(validation.get("main_metric", ""), 0.0)) if validation else 0.0
