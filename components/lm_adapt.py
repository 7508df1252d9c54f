"""LM adaptation: continue pretraining the base with the prefix-LM objective (or skip with steps=0)."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def lm_adapt(base_model: str, steps: int, objective: str, corpus: str, cache_root: str, profile: str,
             model: Output[Model], metrics: Output[Metrics], curves: Output[HTML]) -> str:
    """LM-adapt `base_model` (reusing a cached checkpoint with the same base/objective/steps); steps=0 passes
    the base through unchanged. Returns the model reference that training loads. `curves` (HTML) plots the
    training and validation loss; `metrics` has the validation loss before and after."""
    from softprompt.pipeline_steps import lm_adapt_reports, lm_adapt_step, log_metrics

    ref = lm_adapt_step(base_model, steps, objective, corpus, model.path, cache_root, profile or None)
    log_metrics(metrics, lm_adapt_reports(model.path, curves.path))
    model.metadata.update({"base_model": base_model, "lm_adapt_steps": steps, "objective": objective})
    return ref
