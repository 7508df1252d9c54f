"""Prompt training: one soft prompt per seed (the pipeline fans out over seeds for an ensemble)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_prompt(task: str, data: Input[Dataset], base: Input[Model], profile: str, prompt_length: int, init: str,
                 steps: int, batch_size: int, learning_rate: float, seed: int, prompt: Output[Model]) -> float:
    """Train a soft prompt on the validated data; returns its validation main metric."""
    from softprompt.pipeline_steps import train_step

    meta = train_step(task, data.path, base.path, prompt.path, profile or None, prompt_length=prompt_length,
                      init=init, steps=steps, batch_size=batch_size, lr=learning_rate, seed=seed)
    validation = meta["metrics"]["validation"]
    prompt.metadata.update({"task": task, "seed": seed, "base_model": meta["base_model"],
                            "prompt_length": meta["prompt_length"], "steps": meta["steps_trained"]})
    return float(validation.get(validation.get("main_metric", ""), 0.0)) if validation else 0.0
