"""Configuration as plain data: `params.yaml` holds every default once; dataclasses validate it.

`load_params(profile)` returns the defaults with a profile's overrides applied. The dataclasses below
take their defaults from that file and check their values on construction, so a bad value fails early
with a message naming the field.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import SoftpromptError

# ---- the vocabulary: every set of choices, once. The CLI offers these as its choices and the dataclasses below
# (and softprompt.lm_adapt, softprompt.registry) check values against them.


class Init(str, Enum):
    """How the soft prompt's P vectors start (paper, section 3)."""

    random = "random"
    sampled_vocab = "sampled-vocab"
    class_label = "class-label"


class Method(str, Enum):
    """What training tunes."""

    prompt = "prompt"
    model = "model"


class EvalMethod(str, Enum):
    """What evaluation scores: a prompt, a tuned model, or a text instruction to the frozen model."""

    prompt = "prompt"
    model = "model"
    design = "design"


class EvalMode(str, Enum):
    """How an answer is read: the generated text, or the most likely label string."""

    generate = "generate"
    rank = "rank"


class Objective(str, Enum):
    """LM adaptation's pretraining objective."""

    prefix_lm = "prefix-lm"
    span_corruption = "span-corruption"


class Policy(str, Enum):
    """What registration does about production."""

    auto = "auto"
    never = "never"
    force = "force"


def choices(enum: type[Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


def check_choice(enum: type[Enum], value: Any, name: str) -> None:
    """A one-line error naming the field and its choices, unless `value` is one of `enum`'s."""
    _check(value in choices(enum), name, f"must be one of {', '.join(choices(enum))}, got {value!r}")


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


def param_value(path: str, params: dict[str, Any] | None = None) -> Any:
    """The value at a dotted params.yaml path, e.g. `train.steps` (of `params`, default the file's defaults)."""
    node: Any = load_params() if params is None else params
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise SoftpromptError(f"params.yaml: no setting {path}; restore it from git")
        node = node[key]
    return node


def _defaults(section: str) -> dict[str, Any]:
    return load_params()[section]


def described(text: str, default: Any = None) -> Any:
    """A dataclass field with its help text (the CLI's --help reads it back with `help_of`) and its default,
    which the caller takes from params.yaml."""
    return field(default=default, metadata={"help": text})


def help_of(cls: type, name: str) -> str:
    """The help text of a config field (the one description of a setting; the CLI shows it)."""
    return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def default_of(cls: type, name: str) -> Any:
    """The default of a config field: its params.yaml value."""
    found = next(f for f in fields(cls) if f.name == name)
    return None if found.default is MISSING else found.default


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or value < 1:
        raise SoftpromptError(f"{name}: must be a positive integer, got {value!r}")


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise SoftpromptError(f"{name}: {message}")


_P = _defaults("prompt")
_T = _defaults("train")
_E = _defaults("eval")


@dataclass
class PromptConfig:
    """The soft prompt: how many vectors and how they start."""

    length: int = described("Number of soft-prompt vectors P prepended to the encoder input.", _P["length"])
    init: str = described("Initialisation: random (U[-0.5,0.5]), sampled-vocab (5,000 most common tokens), "
                      "class-label (label-string embeddings, rest sampled-vocab).", _P["init"])

    def __post_init__(self) -> None:
        _check(isinstance(self.length, int) and self.length >= 1, "prompt length", f"must be >= 1, got {self.length}")
        check_choice(Init, self.init, "prompt init")


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are the paper's recipe."""

    method: str = described("prompt: train only the soft prompt; model: tune every weight (baseline).", _T["method"])
    steps: int = described("Number of optimizer steps.", _T["steps"])
    batch_size: int = described("Examples per optimizer step (per device times accumulation; split over the chips "
                                 "on a TPU host).", _T["batch_size"])
    # The optimizer (Adafactor with T5X's semantics, softprompt.optim): None takes the method's recipe from
    # params.yaml `train.optimizer.<method>`.
    lr: float | None = described("Learning rate (default: the method's recipe in params.yaml).", None)
    weight_decay: float | None = described("Decoupled weight decay: param = (1 - wd) * param - update.", None)
    scale_parameter: bool | None = described("Scale updates by the parameter's RMS (T5X multiply_by_parameter_scale).",
                                         None)
    decay_rate: float | None = described("Adafactor second-moment decay exponent.", None)
    clip_threshold: float | None = described("Adafactor update clipping threshold.", None)
    min_dim_size_to_factor: int | None = described("Factor the second moment only if both dims are at least this.",
                                               None)
    eval_every: int = described("Evaluate on validation every N steps and keep the best checkpoint.", _T["eval_every"])
    early_stopping_patience: int = described("Stop after N evaluations without improvement (0: never).",
                                         _T["early_stopping_patience"])
    grad_accumulation: int = described("Gradient accumulation steps (batch_size must divide by it).",
                                   _T["grad_accumulation"])
    seed: int = described("Random seed: the same seed gives the same prompt.", _T["seed"])
    max_source_length: int = described("Maximum input tokens (before the prompt).", _T["max_source_length"])
    max_target_length: int = described("Maximum target tokens.", _T["max_target_length"])
    taskless: bool = described("Drop the task-name prefix from inputs (paper's taskless variant).", _T["taskless"])
    target_sentinel: bool = described("Prepend the first sentinel token to every target (span corruption + "
                                  "sentinel setting).", _T["target_sentinel"])
    fsdp: bool = described("Under torchrun, shard the frozen base's transformer blocks over the processes (FSDP2) "
                           "so each holds 1/N of them; the prompt stays replicated.", _T["fsdp"])

    def __post_init__(self) -> None:
        check_choice(Method, self.method, "method")
        for name in ("steps", "batch_size", "eval_every", "grad_accumulation", "max_source_length",
                     "max_target_length"):
            _positive(name, getattr(self, name))
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
    mode: str = described("generate: exact match of generated label text; rank: score every label string.",
                      _E["mode"])
    batch_size: int = described("Examples per forward pass.", _E["batch_size"])
    split: str = described("Split to evaluate.", _E["split"])
    shots: int = described("Prompt design (--method design): training examples in front of the input.", _E["shots"])

    def __post_init__(self) -> None:
        check_choice(EvalMode, self.mode, "eval mode")
        _check(self.batch_size >= 1, "eval batch_size", "must be >= 1")
        _check(isinstance(self.shots, int) and self.shots >= 0, "shots", f"must be >= 0, got {self.shots!r}")


_L = _defaults("lm_adapt")


@dataclass
class LMAdaptConfig:
    """LM-adaptation hyper-parameters; defaults from params.yaml's `lm_adapt` section."""

    objective: str = described("prefix-lm (LM adaptation) or span-corruption (T5 pretraining).", _L["objective"])
    steps: int = described("Optimizer steps.", _L["steps"])
    batch_size: int = described("Sequences per optimizer step (per device times accumulation; split over the chips "
                                "on a TPU host).", _L["batch_size"])
    grad_accumulation: int = described("Gradient accumulation steps.", _L["grad_accumulation"])
    lr: float = described("Adafactor learning rate (constant after warmup).", _L["lr"])
    warmup_steps: int = described("Linear warmup steps (0: none).", _L["warmup_steps"])
    weight_decay: float = described("Adafactor decoupled weight decay.", _L["weight_decay"])
    scale_parameter: bool = described("Scale Adafactor updates by the parameter's RMS.", _L["scale_parameter"])
    decay_rate: float = described("Adafactor second-moment decay exponent.", _L["decay_rate"])
    clip_threshold: float = described("Adafactor update clipping threshold.", _L["clip_threshold"])
    min_dim_size_to_factor: int = described("Factor the second moment only if both dims are at least this.",
                                       _L["min_dim_size_to_factor"])
    max_source_length: int = described("Input length in tokens, EOS included.", _L["max_source_length"])
    max_target_length: int = described("Maximum target length in tokens, EOS included.", _L["max_target_length"])
    noise_density: float = described("Span corruption: fraction of tokens masked.", _L["noise_density"])
    mean_noise_span_length: float = described("Span corruption: mean masked span length.",
                                         _L["mean_noise_span_length"])
    eval_every: int = described("Validation loss every N steps (also the checkpoint interval).", _L["eval_every"])
    eval_examples: int = described("Validation examples (held out from the corpus unless a validation corpus "
                              "is given).", _L["eval_examples"])
    eval_batch_size: int = described("Validation batch size.", _L["eval_batch_size"])
    shuffle_buffer: int = described("Examples in the streaming shuffle buffer (0: no shuffling).",
                               _L["shuffle_buffer"])
    seed: int = described("Random seed (split points, noise masks, shuffling, Trainer).", _L["seed"])
    text_field: str = described("Field holding the text in .jsonl files and Hugging Face datasets.",
                           _L["text_field"])

    def __post_init__(self) -> None:
        check_choice(Objective, self.objective, "objective")
        for name in ("steps", "batch_size", "grad_accumulation", "eval_every", "eval_examples", "eval_batch_size"):
            _positive(name, getattr(self, name))
        for name in ("warmup_steps", "shuffle_buffer", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise SoftpromptError(f"{name}: must be an integer >= 0, got {getattr(self, name)!r}")
        if self.max_source_length < 3 or self.max_target_length < 2:
            raise SoftpromptError("max_source_length must be >= 3 and max_target_length >= 2 "
                                  f"(got {self.max_source_length}, {self.max_target_length})")
        if not 0 < self.noise_density < 1 or self.mean_noise_span_length < 1:
            raise SoftpromptError("noise_density must be in (0, 1) and mean_noise_span_length >= 1 "
                                  f"(got {self.noise_density}, {self.mean_noise_span_length})")
        if self.batch_size % self.grad_accumulation:
            raise SoftpromptError(f"batch_size: {self.batch_size} is not divisible by grad_accumulation "
                                  f"{self.grad_accumulation}")

    def train_config(self) -> TrainConfig:
        """The same settings as a TrainConfig (whole-model training), for the shared Trainer helpers."""
        return TrainConfig(method="model", steps=self.steps, batch_size=self.batch_size,
                           grad_accumulation=self.grad_accumulation, lr=self.lr, weight_decay=self.weight_decay,
                           scale_parameter=self.scale_parameter, decay_rate=self.decay_rate,
                           clip_threshold=self.clip_threshold, min_dim_size_to_factor=self.min_dim_size_to_factor,
                           eval_every=self.eval_every, seed=self.seed,
                           max_source_length=self.max_source_length, max_target_length=self.max_target_length)

    def recipe(self) -> dict[str, Any]:
        """The settings that change the trained weights (what the content address covers)."""
        skip = {"eval_every", "eval_batch_size", "objective", "steps"}
        if self.objective == "prefix-lm":
            skip |= {"noise_density", "mean_noise_span_length"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


_V = _defaults("validate")


@dataclass
class ValidateConfig:
    """Thresholds of the expectation suite; defaults from the `validate:` section of params.yaml."""

    min_rows: int = described("Fewest rows a split may have.", _V["min_rows"])
    min_class_share: float = described("Smallest share of rows any label may have in a labeled split (0 disables).",
                                   _V["min_class_share"])
    min_text_chars: int = described("Shortest allowed text field, in characters; 0 also allows blank text.",
                                _V["min_text_chars"])
    max_text_chars: int = described("Longest allowed text field, in characters.", _V["max_text_chars"])
    examples: int = described("Offending rows kept per failed expectation in the report.", _V["examples"])

    def __post_init__(self) -> None:
        checks = [
            (self.min_rows >= 0, "min_rows", "must be >= 0"),
            (0.0 <= self.min_class_share < 1.0, "min_class_share", "must be in [0, 1)"),
            (self.min_text_chars >= 0, "min_text_chars", "must be >= 0"),
            (self.max_text_chars >= max(1, self.min_text_chars), "max_text_chars", "must be >= min_text_chars"),
            (self.examples >= 1, "examples", "must be >= 1"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise SoftpromptError(f"validate {name}: {message}, got {getattr(self, name)!r} (params.yaml "
                                      "`validate:` or the command-line option)")


_R = _defaults("registry")


@dataclass
class RegistryConfig:
    """The prompt registry's settings (`registry:` in params.yaml); `softprompt.registry.Settings` is this."""

    remote: str = described("DVC remote for the prompts' files: a directory or gs://BUCKET/PATH "
                            "($SOFTPROMPT_REGISTRY_REMOTE overrides it).", _R["remote"])
    stage: str = described("The GTO stage that marks a task's production prompt.", _R["stage"])
    promote: str = described("After registering: auto (promote if the main metric beats production by the "
                             "promotion margin), never, or force.", _R["promote"])
    promotion_margin: float = described("Required improvement of the main metric over production's, in metric "
                                        "units.", _R["promotion_margin"])
    lock_timeout: float = described("Seconds to wait for another registration in the same checkout.",
                                    _R["lock_timeout"])

    def __post_init__(self) -> None:
        _check(bool(self.remote), "registry.remote", "is not set; set it in params.yaml to a directory or "
                                                     "gs://BUCKET/PATH")
        check_choice(Policy, self.promote, "registry.promote")
        _check(isinstance(self.promotion_margin, int | float) and self.promotion_margin >= 0,
               "registry.promotion_margin", f"must be a number >= 0, got {self.promotion_margin!r}")

    @classmethod
    def load(cls, remote: str | None = None, margin: float | None = None) -> RegistryConfig:
        """params.yaml's settings; an explicit `remote` or $SOFTPROMPT_REGISTRY_REMOTE, and `margin`, win."""
        return from_section(cls, load_params()["registry"],
                            remote=remote or os.environ.get("SOFTPROMPT_REGISTRY_REMOTE"), promotion_margin=margin)

    def remote_url(self) -> str:
        """The URL DVC gets: gs:// as is, a local directory made absolute (so every clone on this machine finds it)."""
        if self.remote.startswith(("gs://", "s3://", "http://", "https://")):
            return self.remote
        return str(Path(os.path.expanduser(self.remote)).resolve())


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
