"""LM adaptation: continue pretraining the base with the prefix-LM objective (or skip with steps=0)."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def lm_adapt(base_model: str, steps: int, objective: str, corpus: str, cache_root: str, profile: str,
             cache_epoch: str, model: Output[Model], metrics: Output[Metrics], curves: Output[HTML]) -> str:
    """LM-adapt `base_model` (reusing a cached checkpoint with the same base/objective/steps). Returns the model
    reference that training loads. `curves` (HTML) plots the training and validation loss; `metrics` has the
    validation loss before and after. `cache_epoch` is read by KFP's cache key only (see preflight)."""
    from softprompt.pipeline_steps import lm_adapt_reports, lm_adapt_step, log_metrics

    ref = lm_adapt_step(base_model, steps, objective, corpus, model.path, cache_root, profile or None)
    log_metrics(metrics, lm_adapt_reports(model.path, curves.path))
    model.metadata.update({"base_model": base_model, "lm_adapt_steps": steps, "objective": objective})
    return ref


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def base_as_is(base_model: str, model: Output[Model], curves: Output[HTML]) -> str:
    """lm_adapt_steps is 0: record that prompts train on `base_model` as it is. A CPU step, so the run asks
    for no GPU node just to write this reference."""
    from softprompt.pipeline_steps import lm_adapt_reports, lm_adapt_step

    ref = lm_adapt_step(base_model, 0, "", "", model.path)
    lm_adapt_reports(model.path, curves.path)
    model.metadata.update({"base_model": base_model, "lm_adapt_steps": 0})
    return ref
