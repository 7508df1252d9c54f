import pytest

from softprompt.config import (
    EvalConfig,
    PromptConfig,
    TrainConfig,
    from_section,
    load_params,
    profiles,
    training_configs,
)
from softprompt.errors import SoftpromptError
from softprompt.lm_adapt import LMAdaptConfig


def test_paper_defaults_come_from_params_yaml():
    params = load_params()
    assert params["prompt"] == {"length": 100, "init": "class-label"}
    cfg = TrainConfig()
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.decay_rate) == (30000, 32, 0.3, 1e-5, 0.8)
    assert PromptConfig().length == 100
    assert params["model"] == "google/t5-base-lm-adapt"


def test_model_tuning_gets_its_own_learning_rate():
    assert TrainConfig(method="model").lr == 0.001
    assert TrainConfig(method="model", lr=0.01).lr == 0.01


def test_each_recipe_has_its_own_optimizer_settings():
    """Prompt tuning: the paper's settings; model tuning and LM adaptation: T5X's full-model defaults."""
    recipes = load_params()["train"]["optimizer"]
    prompt, model = TrainConfig(method="prompt"), TrainConfig(method="model")
    assert (prompt.lr, prompt.weight_decay, prompt.scale_parameter) == (0.3, 1e-5, False)
    assert (model.lr, model.weight_decay, model.scale_parameter) == (0.001, 0.0, True)
    for cfg, name in ((prompt, "prompt"), (model, "model")):
        assert {k: getattr(cfg, k) for k in recipes[name]} == recipes[name]
        assert (cfg.decay_rate, cfg.clip_threshold, cfg.min_dim_size_to_factor) == (0.8, 1.0, 128)
    assert model.optimizer() == {"lr": 0.001, "weight_decay_rate": 0.0, "scale_parameter": True, "decay_rate": 0.8,
                                 "clip_threshold": 1.0, "min_dim_size_to_factor": 128}
    lm = LMAdaptConfig().train_config()
    assert (lm.weight_decay, lm.scale_parameter, lm.decay_rate, lm.clip_threshold) == (0.0, True, 0.8, 1.0)
    # training_configs takes the chosen method's recipe; an explicit --lr still wins
    _, cfg, _ = training_configs(load_params(), method="model", lr=0.01)
    assert (cfg.lr, cfg.weight_decay, cfg.scale_parameter) == (0.01, 0.0, True)


def test_profile_overrides_and_explicit_values_win():
    smoke = load_params("smoke")
    assert smoke["model"] == "tiny" and smoke["train"]["steps"] == 30
    assert smoke["train"]["optimizer"]["prompt"]["weight_decay"] == 1e-5  # untouched defaults survive the merge
    cfg = from_section(TrainConfig, smoke["train"], steps=7, seed=None)
    assert cfg.steps == 7 and cfg.seed == smoke["train"]["seed"]
    assert {"smoke", "local", "paper"} <= set(profiles())


@pytest.mark.parametrize("make, field", [
    (lambda: PromptConfig(length=0), "prompt length"),
    (lambda: PromptConfig(init="zeros"), "prompt init"),
    (lambda: TrainConfig(method="lora"), "method"),
    (lambda: TrainConfig(steps=0), "steps"),
    (lambda: TrainConfig(batch_size=6, grad_accumulation=4), "batch_size"),
    (lambda: TrainConfig(decay_rate=1.5), "decay_rate"),
    (lambda: EvalConfig(mode="beam"), "eval mode"),
    (lambda: load_params("nope"), "unknown profile"),
])
def test_bad_values_fail_on_construction_naming_the_field(make, field):
    with pytest.raises(SoftpromptError, match=field):
        make()
