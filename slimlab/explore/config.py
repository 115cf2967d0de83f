"""What `slimlab explore` is asked: a model, its weights, its data, an accuracy budget, one figure to minimize."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimlab.config import read_yaml_mapping
from slimlab.errors import ConfigError

OBJECTIVES = ("latency_bN", "energy_bN", "size", "payload", "macs")  # what a deployable file's record holds, per batch or per file
ENGINES = ("x86", "fbgemm", "qnnpack", "pt2e", "onnxruntime")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh]?)")


def parse_duration(text: str | int | float | None) -> float | None:
    """'2h', '90m', '45s' or a number of seconds -> seconds; None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    match = _DURATION.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"expected a duration such as 2h, 90m or 45s, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class ExploreConfig(BaseModel):
    """The whole question; every trial it starts is an ordinary run config derived from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("", description="names the explore's studies in the store; default: from the model")
    model: str = Field(..., description="a registered model or package.module:factory")
    weights: str | None = Field(None, description="a state-dict checkpoint of the trained model")
    model_options: dict[str, Any] = Field(default_factory=dict)
    data: str = Field(..., description="a registered dataset name, or an image folder")
    data_options: dict[str, Any] = Field(default_factory=dict)
    val_size: int | None = Field(None, gt=0, description="training images held out as the validation split every choice is "
                                 "made on; default 5,000 or a fifth of the training images, whichever is fewer")
    calibration_size: int | None = Field(None, gt=0, description="further training images the int8 candidates calibrate "
                                         "on; default 1,000 or a fifth of the rest, whichever is fewer")
    max_drop: float = Field(1.0, ge=0, description="points of validation top-1 a candidate may lose against the float model")
    minimize: str = Field("latency_b1", description="latency_bN (ms per batch of N), energy_bN (mJ per batch of N, from "
                          "RAPL or NVML; energy is energy_b1), size (the file's bytes on disk), payload (the bytes of its "
                          "tensors, without the code a small model's file is mostly) or macs")
    time_budget: float | None = Field(None, description="stop starting new stages after this long (2h, 90m, 45s)")
    slice_size: int = Field(1000, gt=0, description="validation images of the first rung of successive halving")
    eta: int = Field(3, ge=2, description="successive halving: about 1/eta of the first rung is promoted")
    engines: list[str] = Field(default_factory=lambda: ["x86"], min_length=1, description="int8 engines to try")
    float_layers: list[int] = Field(default_factory=lambda: [1, 2, 4], description="k: mixed precision with the k most sensitive layers float")
    unstructured_ladder: list[float] = Field(default_factory=lambda: [0.5, 0.8], description="sensitivity: sparsities per layer")
    channel_ladder: list[float] = Field(default_factory=lambda: [0.25, 0.5], description="sensitivity and candidates: channel ratios")
    min_gain: float = Field(0.05, ge=0, lt=1, description="a candidate from the evidence goes on to the whole validation "
                            "split only if its objective on the slice is this fraction below the best answer so far")
    finetune_epochs: int = Field(0, ge=0, description="epochs of fine-tuning (QAT, retraining after pruning) for the fastest "
                                 "candidates that miss the budget; 0: none")
    device: str = Field("cpu", description="where trials run and are timed")
    seed: int = Field(0, ge=0)

    @field_validator("minimize")
    @classmethod
    def _objective(cls, value: str) -> str:
        if not re.fullmatch(r"(latency|energy)_b[1-9]\d*|energy|size|payload|macs", value):
            raise ValueError(f"unknown objective {value!r}; choose {', '.join(OBJECTIVES)}")
        return value

    @field_validator("engines")
    @classmethod
    def _engines(cls, value: list[str]) -> list[str]:
        if unknown := [e for e in value if e not in ENGINES]:
            raise ValueError(f"unknown int8 engine {unknown[0]!r}; choose from {', '.join(ENGINES)}")
        return value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)

    @field_validator("unstructured_ladder", "channel_ladder")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in value):
            raise ValueError("ratios must lie strictly between 0 and 1")
        return sorted(value)

    @model_validator(mode="after")
    def _named(self):
        if not self.name:
            module, _, factory = self.model.rpartition(":")  # mymodels:build -> mymodels-build: factories share names
            stem = "-".join(filter(None, [module.rsplit(".", 1)[-1], factory]))
            object.__setattr__(self, "name", re.sub(r"[^A-Za-z0-9_.+-]", "-", stem))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits and _ . + -")
        return self

    @property
    def batch(self) -> int:
        """The batch size the objective is timed at (1 unless it is latency_bN or energy_bN)."""
        return int(self.minimize.partition("_b")[2]) if self.minimize.partition("_b")[2].isdigit() else 1


def build_explore_config(raw: dict, source: str = "explore") -> ExploreConfig:
    """Validate; the first bad key and the problem in one line."""
    try:
        return ExploreConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {where}: {message}") from None


def load_explore_config(path: str | Path | None, flags: dict) -> ExploreConfig:
    """The YAML form (if given) with the command line's flags on top."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such explore file")
        raw = read_yaml_mapping(path, "explore file (model, weights, data, max_drop, minimize, ...)")
    raw.update({k: v for k, v in flags.items() if v is not None})
    for key in ("model", "data"):
        if not raw.get(key):
            raise ConfigError(f"{path or 'slimlab explore'}: {key}: required (--{key} or `{key}:` in the YAML)")
    return build_explore_config(raw, str(path) if path else "slimlab explore")
