import pytest

from softprompt.config import EvalConfig, PromptConfig, TrainConfig, from_section, load_params, profiles
from softprompt.errors import SoftpromptError


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


def test_profile_overrides_and_explicit_values_win():
    smoke = load_params("smoke")
    assert smoke["model"] == "tiny" and smoke["train"]["steps"] == 30
    assert smoke["train"]["weight_decay"] == 1e-5  # untouched defaults survive the merge
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
