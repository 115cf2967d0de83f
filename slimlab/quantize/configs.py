"""Small frozen, serialisable configs, one per quantization verb (store them beside results and rebuild them later)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Observer = Literal["minmax", "moving_average", "histogram"]
Backend = Literal["x86", "fbgemm", "qnnpack"]
Mode = Literal["auto", "eager", "fx"]
# The engine of static PTQ and QAT when a config names none: the one line to change to make `pt2e` the default, once
# it is measured at least as fast and as accurate on the trained model (issue 18). Dynamic quantization keeps `x86`:
# only torch.ao has dynamic kernels. A changed default changes the hash of every config that left the engine out.
DEFAULT_ENGINE = "x86"


class QuantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = 1  # bump when a field changes meaning, so a stored config is never misread


class DynamicConfig(QuantConfig):
    """Weights quantized ahead of time, activations at run time; only Linear and recurrent layers have such kernels."""

    dtype: Literal["int8", "float16"] = "int8"
    engine: Backend = "x86"
    skip: tuple[str, ...] = Field((), description="module names or globs left in float")


class StaticConfig(QuantConfig):
    """Post-training static quantization: fuse, observe calibration batches, convert to int8 kernels."""

    engine: str = Field(DEFAULT_ENGINE, description="a registered engine: x86, fbgemm, qnnpack (torch.ao eager/FX), onnxruntime, pt2e "
                                           "(torchao PT2E, lowered by torch.compile) or auto (the fastest accurate one here)")
    observer: Observer = "histogram"
    per_channel: bool = True
    skip: tuple[str, ...] = Field((), description="module names or globs left in float")
    auto_skip_worst_k: int = Field(0, ge=0, description="also leave the k layers with the lowest local SQNR in float")
    mode: Mode = Field("auto", description="torch engines: eager modules, FX graph mode, or auto (eager when the model allows)")
    auto_batch_sizes: tuple[int, ...] = Field((1, 64), description="engine auto: the batch sizes it times each engine at")
    auto_tolerance_db: float = Field(3.0, ge=0, description="engine auto: candidates within this SQNR of the best may be chosen")

    @field_validator("engine")
    @classmethod
    def _engine_registered(cls, value: str) -> str:
        from slimlab.quantize.engines import engine_names

        if value not in engine_names():
            raise ValueError(f"unknown engine {value!r}; registered: {', '.join(engine_names())}")
        return value


class QATConfig(QuantConfig):
    """Quantization-aware training: fake-quantized layers to fine-tune, then conversion to int8 kernels."""

    engine: Literal["x86", "fbgemm", "qnnpack", "pt2e"] = DEFAULT_ENGINE
    per_channel: bool = True
    skip: tuple[str, ...] = Field((), description="module names or globs left in float")
    mode: Mode = "auto"
