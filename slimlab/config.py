"""Typed, frozen experiment configs; YAML + `--set` overrides; validation that names the key; the canonical hash."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimlab.errors import ConfigError
from slimlab.extras.fields import LookaheadFields, WeightAverageFields
from slimlab.fingerprint import content_fingerprint
from slimlab.optimizers.fields import MuonFields

# Bump whenever a field is added, removed or changes meaning: the run id changes with it, so old results
# are never silently reused under a new meaning (a golden-hash test pins the current value).
SCHEMA_VERSION = 10  # 10: issue 19 removed train.distill_weight, train.distill_mirrored and train.branches

# Keys that once existed: a config that still sets one gets this line instead of "unknown key".
_SELF_DISTILLATION = "removed in issue 19 with self-distillation, which lost 0.9 points on the recipe (docs/results.md)"
REMOVED_KEYS = {
    "train.distill_weight": _SELF_DISTILLATION,
    "train.distill_mirrored": _SELF_DISTILLATION,
    "train.branches": "removed in issue 19 with training branches, which gained 0.0 points on the recipe (docs/results.md)",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(Strict):
    name: str = "cifar10_jpeg"
    path: str | None = Field(None, description="a file or folder for datasets that need one (imagefolder)")
    root: list[str] = Field(default_factory=list, description="extra folders searched for dataset files")
    download: bool = False
    val_size: int = Field(5000, ge=0, description="images carved from the training set for validation/calibration")
    train_subset: int | None = Field(None, gt=0, description="use only N training images (quick runs): a class-balanced "
                                      "random sample, the same for every seed")
    test_subset: int | None = Field(None, gt=0, description="evaluate on N test images (quick runs): a class-balanced "
                                     "random sample, the same for every seed")
    crop_padding: int = Field(4, ge=0)
    crop_padding_mode: Literal["zeros", "reflect"] = Field("zeros", description="what fills the border a random crop "
                                                           "reaches into: black, or the image mirrored")
    flip: bool = True
    alternate_flips: bool = Field(False, description="flip each image in every other epoch (random phase per image) instead of "
                                  "a fresh coin toss each epoch: every epoch then sees the mirror of the last (Jordan 2024)")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, v):
        from slimlab.data import list_datasets

        if v not in list_datasets():
            raise ValueError(f"unknown dataset '{v}'; known: {', '.join(list_datasets())}")
        return v

    @model_validator(mode="after")
    def _known_options(self):
        from slimlab.data import dataset_options

        accepted = dataset_options(self.name)
        unknown = sorted(set(self.options) - set(accepted) - {"progress"})
        if unknown:
            raise ValueError(f"data.options {', '.join(unknown)}: not read by dataset '{self.name}' "
                             f"(it reads: {', '.join(accepted) or 'no options'})")
        return self


class ModelConfig(Strict):
    name: str = "resnet20"
    weights: str | None = Field(None, description="a state-dict checkpoint to load instead of (or before) training")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the model factory")

    @field_validator("name")
    @classmethod
    def _registered(cls, v):
        from slimlab.models import list_models

        if ":" not in v and v not in list_models():
            raise ValueError(f"unknown model '{v}'; known: {', '.join(list_models())}, or 'package.module:factory'")
        return v


# The extras' and optimizers' own keys, as flat `train:` keys: classes in their packages' fields.py, which define
# config classes only, so this module imports no extra's or optimizer's code (a test checks every one is named here).
class TrainConfig(Strict, LookaheadFields, WeightAverageFields, MuonFields):
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(128, gt=0)
    optimizer: str = Field("sgd", description="a registered optimizer (slimlab/optimizers/): sgd, or muon: convolution "
                           "weights take orthogonalized steps (Jordan et al. 2024); every other parameter takes SGD steps at lr")
    lr: float = Field(0.2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    decay_norm_and_bias: bool = Field(False, description="apply weight decay to batch-norm and bias parameters too")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    uncropped_final_epochs: int = Field(0, ge=0, description="train the last N epochs on uncropped images (flips stay), "
                                        "closing the gap between padded crops and test images (He et al. 2019)")
    schedule: Literal["onecycle", "cosine", "step", "constant"] = "onecycle"
    warmup_epochs: float = Field(1.0, ge=0)
    final_lr_fraction: float = Field(0.0, ge=0, le=1)
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="step schedule: fractions of training")
    gamma: float = Field(0.1, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16/fp16 autocast on CUDA only")
    cpu_bf16: bool = Field(False, description="bf16 autocast for training steps on a CPU with native bf16 (AVX512-BF16 "
                           "or AMX), faster there (bench/train_throughput.py); weights, optimizer and evaluation stay fp32. Where the CPU "
                           "lacks it, training runs in fp32 and the history says so")
    channels_last: bool = True
    max_batches_per_epoch: int | None = Field(None, gt=0, description="cap batches per epoch (quick runs, tests)")

    @field_validator("optimizer")
    @classmethod
    def _registered_optimizer(cls, v):
        from slimlab.optimizers import optimizers

        if v not in optimizers():
            raise ValueError(f"unknown optimizer '{v}'; known: {', '.join(sorted(optimizers()))}")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones_in_range(cls, v):
        if any(not 0 < m < 1 for m in v) or v != sorted(v):
            raise ValueError("milestones must be increasing fractions of training between 0 and 1")
        return v

    @model_validator(mode="after")
    def _schedule_fits_epochs(self):
        # Both named at once, with the values that fit: shortening a recipe (--set train.epochs=1) trips on both.
        too_long = [(key, value) for key, value in (("warmup_epochs", self.warmup_epochs), ("uncropped_final_epochs",
                    self.uncropped_final_epochs)) if self.epochs and value > self.epochs]
        if too_long:
            named = " and ".join(f"train.{key} ({value})" for key, value in too_long)
            fixes = " ".join(f"--set train.{key}={self.epochs}" for key, _ in too_long)
            raise ValueError(f"{named} exceed{'s' * (len(too_long) == 1)} train.epochs ({self.epochs}); shorten "
                             f"{'it' if len(too_long) == 1 else 'them'} too, e.g. {fixes}")
        if self.uncropped_final_epochs > self.epochs:  # with epochs: 0
            raise ValueError(f"train.uncropped_final_epochs ({self.uncropped_final_epochs}) exceeds train.epochs ({self.epochs})")
        return self


class MeasureConfig(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    warmup: int = Field(10, ge=1)
    repeats: int = Field(30, ge=5, description="timed runs per latency figure (median and p90 reported)")
    threads: int | None = Field(None, gt=0, description="torch threads during timing; default: torch's thread count (a local "
                                "worker's share of the cores), at most the CPUs this process may run on")
    eval_batch_size: int = Field(500, gt=0)
    latency: bool = True
    energy: bool = Field(True, description="energy from RAPL (CPU packages) or NVML (GPU) where a counter is readable: "
                         "the training's (train_energy_j) and, after each latency, millijoules per batch (energy_bN_mj)")
    flip_tta: bool = Field(False, description="also report top1_flip_tta: logits averaged over each test image and its mirror")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v):
        if not v or any(b <= 0 for b in v):
            raise ValueError("batch_sizes must be a non-empty list of positive integers")
        return v


class ExperimentConfig(Strict):
    name: str = ""
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    steps: list[dict[str, Any]] = Field(default_factory=list, description="compression steps after training, in order")

    @field_validator("steps")
    @classmethod
    def _steps_known(cls, v):
        steps = [validate_step(i, s) for i, s in enumerate(v)]
        _prune_before_quantize([step["kind"] for step in steps])
        return steps

    @model_validator(mode="after")
    def _a_batch_fits_the_training_subset(self):
        if self.train.epochs and self.data.train_subset is not None and self.data.train_subset < self.train.batch_size:
            raise ValueError(f"data.train_subset ({self.data.train_subset}) is smaller than train.batch_size "
                             f"({self.train.batch_size}): training drops a short last batch, so no step would run")
        return self


def step_configs() -> dict[str, type[BaseModel]]:
    """Each step kind and the class that validates it: a static map (slimlab.steps registers each kind's code with
    the same class). Imported here, when a step is validated, not at the top: importing them initializes slimlab.prune
    and slimlab.quantize, whose code imports this module."""
    from slimlab.prune.config import PruneStepConfig
    from slimlab.quantize.step_config import QuantizeStepConfig

    return {"prune": PruneStepConfig, "quantize": QuantizeStepConfig}


def validate_step(index: int, raw: dict) -> dict:
    """Check one step mapping {'kind': ..., ...}; returns it with defaults filled in (so the hash sees them)."""
    kinds = step_configs()
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ValueError(f"step {index} needs a 'kind' (one of: {', '.join(sorted(kinds))})")
    kind = raw["kind"]
    if kind not in kinds:
        raise ValueError(f"step {index}: unknown kind {kind!r} (known: {', '.join(sorted(kinds))})")
    body = {k: v for k, v in raw.items() if k != "kind"}
    try:
        parsed = kinds[kind].model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ValueError(f"step {index} ({kind}): {where + ': ' if where else ''}{msg}") from None
    return {"kind": kind, **parsed.model_dump(mode="json")}


def _prune_before_quantize(kinds: list[str]) -> None:
    """Pruning scores, masks and retrains float weights; after a quantize step they are int8 (or fp16), so a prune step
    there would at best prune the layers left in float and backpropagate through int8 kernels that have no gradient."""
    if "quantize" not in kinds or "prune" not in kinds[kinds.index("quantize"):]:
        return
    first_q = kinds.index("quantize")
    late_p = kinds.index("prune", first_q)
    order = [k for k in kinds if k == "prune"] + [k for k in kinds if k != "prune"]
    raise ValueError(f"step {late_p} (prune) comes after step {first_q} (quantize): pruning needs the float weights that "
                     f"quantization replaces; put the prune step first, in the order that works: "
                     f"[{', '.join('{kind: ' + k + ', ...}' for k in order)}]")


def canonical_json(config: ExperimentConfig) -> str:
    """The whole config, every default included, as sorted compact JSON."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


# Keys that say where to look or what to call a run, not what it computes: they are left out of its identity, so
# renaming a study or moving a dataset file re-runs nothing. The files' contents are in the identity instead.
_NOT_IDENTITY = {"name": True, "data": {"root", "download", "path"}, "model": {"weights"}}


def input_fingerprints(config: ExperimentConfig) -> dict:
    """The contents of the files the config names (`model.weights`, `data.path`), wherever they lie: a replaced
    checkpoint is a new run, a copied or moved one is the same run."""
    named = {"model.weights": config.model.weights, "data.path": config.data.path}
    return {key: content_fingerprint(Path(value)) if Path(value).exists() else f"missing:{value}"
            for key, value in named.items() if value}


def resolved_runtime(config: ExperimentConfig, device: str | None = None) -> dict:
    """The device type a run trains and is measured on (train.device, or for `auto` the one given or found here) and
    the training precision the config asks for on it; part of the run id, so CPU and GPU results never share one.
    The host is never probed for its CPU's features (`cpu_bf16` is asked for, whether or not this CPU has native
    bf16), so the login node's plan and the compute node's record give one id; the record's notes say what was used."""
    if config.train.device != "auto":
        device = config.train.device
    elif device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    wanted = config.train.amp if device == "cuda" else config.train.cpu_bf16
    precision = "bf16-autocast" if wanted else "fp32"
    return {"device": device, "precision": precision}


def _identity(config: ExperimentConfig, include: set[str] | None, device: str | None) -> str:
    payload = config.model_dump(mode="json", include=include, exclude=_NOT_IDENTITY)
    payload["_inputs"] = input_fingerprints(config)
    payload["_runtime"] = resolved_runtime(config, device)
    payload["train"]["device"] = payload["_runtime"]["device"]  # `auto` that resolved to cpu is the same run as `cpu`
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def config_hash(config: ExperimentConfig, device: str | None = None) -> str:
    """The run id: a hash of the schema version, the whole canonical config (defaults included, names and search
    paths left out), the contents of the files it names, and the resolved device and precision (`device` resolves
    train.device `auto` where the run will execute, e.g. a GPU node; by default, this machine)."""
    payload = f"slimlab-schema-{SCHEMA_VERSION}:{_identity(config, None, device)}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def training_hash(config: ExperimentConfig, device: str | None = None) -> str:
    """Key of the training stage alone (seed, data, model, train, the files they name, device and precision): runs
    that differ only in steps or measurement share one trained model, so a study's dense parent is trained once."""
    text = _identity(config, {"seed", "data", "model", "train"}, device)
    return hashlib.sha256(f"slimlab-schema-{SCHEMA_VERSION}:train:{text}".encode()).hexdigest()[:16]


def rewind_epochs(config: ExperimentConfig) -> set[int]:
    """Epochs whose weights a step will rewind to (late rewinding), saved while training so nothing is replayed."""
    return {int(step["rewind_epoch"]) for step in config.steps if step.get("rewind_epoch")}


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=5' -> (['train', 'epochs'], 5); the value is read as YAML so numbers, lists and bools work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML (to pass it as a string, put it in quotes)") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set dotted keys; a number addresses a list item, as in steps.0.amount=0.5."""
    merged = json.loads(json.dumps(raw))
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"--set {text!r}: '{k}' is not an index of the {len(node)}-item list before it")
                k = int(k)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: '{keys[depth - 1]}' is not a section")
            if last:
                node[k] = value
            else:
                if isinstance(node, dict):
                    node.setdefault(k, {})
                node = node[k]
    return merged


def build_config(raw: dict, source: str = "config") -> ExperimentConfig:
    """Validate a plain dict; the error names the first bad key, the file and the problem."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        # A removed key is named first: it is the likeliest cause of the other problems in an old config.
        err = min(exc.errors(), key=lambda e: ".".join(map(str, e["loc"])) not in REMOVED_KEYS)
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and where in REMOVED_KEYS:
            message = f"{REMOVED_KEYS[where]}; delete the key"
        # A check across keys gets the whole section as its input: its message names the keys, so the section is not shown.
        got = "" if err["type"] == "extra_forbidden" or isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
        more = f" and {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {where}: {message}{got}{more}") from None


STUDY_ONLY_KEYS = {"base", "set", "grid", "zip", "exclude", "seeds", "variants", "slurm"}  # slimlab.plan.STUDY_KEYS less name


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file whose top level is a mapping; bad YAML, an empty file or another shape is a one-line ConfigError."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({what}): {str(exc).splitlines()[0]}") from None
    if data is None:  # an empty file would otherwise run every default: a full-length training nobody asked for
        raise ConfigError(f"{path}: the file is empty; a {what} needs at least one key")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of keys to values, not a {type(data).__name__}")
    return data


def step_override_applies(raw: dict, text: str) -> bool:
    """False for `steps.N.KEY=...` where `raw` has no step N: a study applies it to the variants that have that step."""
    keys, _ = parse_override(text)
    if keys[0] != "steps" or len(keys) < 3 or not keys[1].isdigit():
        return True
    return int(keys[1]) < len(raw.get("steps") or [])


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or start from `base`), apply `--set` overrides, validate."""
    raw: dict = dict(base or {})
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        raw.update(read_yaml_mapping(path, "config file (sections data, model, train, ...)"))
        if study_keys := sorted(STUDY_ONLY_KEYS & set(raw)):
            raise ConfigError(f"{path}: a study file (it has {', '.join(study_keys)}), not an experiment: run it with "
                              f"`slimlab study {path}`")
    return build_config(apply_overrides(raw, list(overrides)), source)
