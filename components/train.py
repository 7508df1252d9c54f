"""Prompt training: one soft prompt per seed (the pipeline fans out over seeds for an ensemble)."""

from kfp import dsl
from kfp.dsl import HTML, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_prompt(task: str, data: str, data_fingerprint: str, base: Input[Model], profile: str, prompt_length: int,
                 init: str, steps: int, batch_size: int, learning_rate: float, seed: int,
                 prompt: Output[Model], metrics: Output[Metrics], curves: Output[HTML]) -> float:
    """Train a soft prompt on the validated data at `data` (content-addressed; its files must hash to
    `data_fingerprint`); returns its validation main metric. The prompt's `runs/` holds its TensorBoard logs;
    `curves` (HTML) plots the training loss and the validation score over steps."""
    import tempfile

    from softprompt.config import load_params
    from softprompt.pipeline_steps import fetch_validated, log_metrics, train_reports, train_step
    from softprompt.trainjob import placement, run_train_job

    overrides = dict(prompt_length=prompt_length, init=init, steps=steps, batch_size=batch_size, lr=learning_rate)
    if placement(load_params(profile or None)):  # params.yaml cluster: more than one node or GPU: a TrainJob
        meta = run_train_job(task, data, data_fingerprint, base.uri, prompt.path, prompt.uri + ".trainjob",
                             profile or None, seed, overrides)
    else:
        local = fetch_validated(data, data_fingerprint, tempfile.mkdtemp())
        meta = train_step(task, local, base.path, prompt.path, profile or None,
                          data_meta={"fingerprint": data_fingerprint, "location": data}, seed=seed, **overrides)
    log_metrics(metrics, train_reports(prompt.path, curves.path))
    validation = meta["metrics"]["validation"]
    prompt.metadata.update({"task": task, "seed": seed, "base_model": meta["base_model"],
                            "prompt_length": meta["prompt_length"], "steps": meta["steps_trained"],
                            "data_fingerprint": data_fingerprint})
    return float(validation.get(validation.get("main_metric", ""), 0.0)) if validation else 0.0
