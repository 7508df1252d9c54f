"""Configuration as plain data: `params.yaml` holds every default once; dataclasses validate it.

`load_params(profile)` returns the defaults with a profile's overrides applied. The dataclasses below
take their defaults from that file and check their values on construction, so a bad value fails early
with a message naming the field.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError

INITS = ("random", "sampled-vocab", "class-label")
METHODS = ("prompt", "model")
EVAL_MODES = ("generate", "rank")


def params_path() -> Path:
    """Where params.yaml is read from: $SOFTPROMPT_PARAMS, else the copy shipped with the package."""
    env = os.environ.get("SOFTPROMPT_PARAMS")
    if env:
        return Path(env)
    return Path(str(resources.files("softprompt") / "params.yaml"))


@functools.cache
def _raw_params(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SoftpromptError(f"{path}: cannot read params ({e}); restore it from git") from e
    if not isinstance(data, dict):
        raise SoftpromptError(f"{path}: expected a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `override` merged in recursively (override wins)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def profiles() -> list[str]:
    return sorted(_raw_params(str(params_path())).get("profiles", {}))


def load_params(profile: str | None = None) -> dict[str, Any]:
    """The defaults from params.yaml, with `profile`'s overrides applied (None: the paper's recipe)."""
    raw = _raw_params(str(params_path()))
    base = {k: v for k, v in raw.items() if k != "profiles"}
    if profile is None:
        return copy.deepcopy(base)
    known = raw.get("profiles", {})
    if profile not in known:
        raise SoftpromptError(f"unknown profile {profile!r}; choose one of {', '.join(sorted(known))} (params.yaml)")
    return deep_merge(base, known[profile] or {})


def _defaults(section: str) -> dict[str, Any]:
    return load_params()[section]


def _help(text: str, default: Any = None) -> Any:
    """A dataclass field with a help text (shown by --help) and its default from params.yaml."""
    return field(default=default, metadata={"help": text})


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise SoftpromptError(f"{name}: {message}")


_P = _defaults("prompt")
_T = _defaults("train")
_E = _defaults("eval")


@dataclass
class PromptConfig:
    """The soft prompt: how many vectors and how they start."""

    length: int = _help("Number of soft-prompt vectors P prepended to the encoder input.", _P["length"])
    init: str = _help("Initialisation: random (U[-0.5,0.5]), sampled-vocab (5,000 most common tokens), "
                      "class-label (label-string embeddings, rest sampled-vocab).", _P["init"])

    def __post_init__(self) -> None:
        _check(isinstance(self.length, int) and self.length >= 1, "prompt length", f"must be >= 1, got {self.length}")
        _check(self.init in INITS, "prompt init", f"must be one of {', '.join(INITS)}, got {self.init!r}")


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's recipe."""

    method: str = _help("prompt: train only the soft prompt; model: tune every weight (baseline).", _T["method"])
    steps: int = _help("Number of optimizer steps.", _T["steps"])
    batch_size: int = _help("Examples per optimizer step (per device times accumulation; split over the chips "
                            "on a TPU host).", _T["batch_size"])
    # The optimizer (Adafactor with T5X's semantics, softprompt.optim): None takes the method's recipe from
    # params.yaml `train.optimizer.<method>`.
    lr: float | None = _help("Learning rate (default: the method's recipe in params.yaml).", None)
    weight_decay: float | None = _help("Decoupled weight decay: param = (1 - wd) * param - update.", None)
    scale_parameter: bool | None = _help("Scale updates by the parameter's RMS (T5X multiply_by_parameter_scale).",
                                         None)
    decay_rate: float | None = _help("Adafactor second-moment decay exponent.", None)
    clip_threshold: float | None = _help("Adafactor update clipping threshold.", None)
    min_dim_size_to_factor: int | None = _help("Factor the second moment only if both dims are at least this.",
                                               None)
    eval_every: int = _help("Evaluate on validation every N steps and keep the best checkpoint.", _T["eval_every"])
    early_stopping_patience: int = _help("Stop after N evaluations without improvement (0: never).",
                                         _T["early_stopping_patience"])
    grad_accumulation: int = _help("Gradient accumulation steps (batch_size must divide by it).",
                                   _T["grad_accumulation"])
    seed: int = _help("Random seed: the same seed gives the same prompt.", _T["seed"])
    max_source_length: int = _help("Maximum input tokens (before the prompt).", _T["max_source_length"])
    max_target_length: int = _help("Maximum target tokens.", _T["max_target_length"])
    taskless: bool = _help("Drop the task-name prefix from inputs (paper's taskless variant).", _T["taskless"])
    target_sentinel: bool = _help("Prepend the first sentinel token to every target (span corruption + "
                                  "sentinel setting).", _T["target_sentinel"])

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("steps", "batch_size", "eval_every", "grad_accumulation", "max_source_length",
                     "max_target_length"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, f"must be a positive integer, got {value!r}")
        _check(self.batch_size % self.grad_accumulation == 0, "batch_size",
               f"{self.batch_size} is not divisible by grad_accumulation {self.grad_accumulation}")
        _check(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
        for name, value in optimizer_recipe(_T, self.method).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.weight_decay < 1, "weight_decay", f"must be in [0, 1), got {self.weight_decay}")
        _check(0 < self.decay_rate < 1, "decay_rate", f"must be in (0, 1), got {self.decay_rate}")
        _check(self.clip_threshold > 0, "clip_threshold", f"must be > 0, got {self.clip_threshold}")
        _check(self.min_dim_size_to_factor >= 1, "min_dim_size_to_factor", "must be >= 1")

    def optimizer(self) -> dict[str, Any]:
        """The keyword arguments of softprompt.optim.T5XAdafactor."""
        kwargs = {name: getattr(self, name) for name in OPTIMIZER_FIELDS}
        kwargs["weight_decay_rate"] = kwargs.pop("weight_decay")
        return kwargs


OPTIMIZER_FIELDS = ("lr", "weight_decay", "scale_parameter", "decay_rate", "clip_threshold", "min_dim_size_to_factor")


def optimizer_recipe(train_params: dict[str, Any], method: str) -> dict[str, Any]:
    """The optimizer settings of `method` (prompt | model) from a params `train` section."""
    recipes = train_params.get("optimizer") or {}
    if method not in recipes:
        raise SoftpromptError(f"params.yaml: train.optimizer has no {method!r} recipe; restore it from git")
    recipe = recipes[method]
    missing = [name for name in OPTIMIZER_FIELDS if name not in recipe]
    if missing:
        raise SoftpromptError(f"params.yaml: train.optimizer.{method} lacks {', '.join(missing)}")
    return {name: recipe[name] for name in OPTIMIZER_FIELDS}


@dataclass
class EvalConfig:
    mode: str = _help("generate: exact match of generated label text; rank: score every label string.",
                      _E["mode"])
    batch_size: int = _help("Examples per forward pass.", _E["batch_size"])
    split: str = _help("Split to evaluate.", _E["split"])
    shots: int = _help("Prompt design (--method design): training examples in front of the input.", _E["shots"])

    def __post_init__(self) -> None:
        _check(self.mode in EVAL_MODES, "eval mode", f"must be one of {', '.join(EVAL_MODES)}, got {self.mode!r}")
        _check(self.batch_size >= 1, "eval batch_size", "must be >= 1")
        _check(isinstance(self.shots, int) and self.shots >= 0, "shots", f"must be >= 0, got {self.shots!r}")


def from_section(cls: type, params: dict[str, Any], **overrides: Any) -> Any:
    """Build a config dataclass from a params section, then apply non-None overrides."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in params.items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None and k in names})
    return cls(**values)


def training_configs(params: dict[str, Any], prompt_length: int | None = None, init: str | None = None,
                     **train_overrides: Any) -> tuple[PromptConfig, TrainConfig, EvalConfig]:
    """The three configs `softprompt.training.train` takes, from params with non-None overrides applied."""
    method = train_overrides.get("method") or params["train"]["method"]
    # The profile's recipe for the chosen method, under the explicit overrides.
    recipe = {**optimizer_recipe(params["train"], method),
              **{k: v for k, v in train_overrides.items() if v is not None}}
    return (from_section(PromptConfig, params["prompt"], length=prompt_length, init=init),
            from_section(TrainConfig, params["train"], **recipe),
            from_section(EvalConfig, params["eval"]))


def component_image(params: dict[str, Any] | None = None) -> str:
    """The container image every pipeline component runs in: `cluster.image:cluster.image_tag` from
    params.yaml (the same setting `make image` builds and pushes), or $SOFTPROMPT_IMAGE."""
    if os.environ.get("SOFTPROMPT_IMAGE"):
        return os.environ["SOFTPROMPT_IMAGE"]
    cluster = (params or load_params())["cluster"]
    return f"{cluster['image']}:{cluster['image_tag']}"
