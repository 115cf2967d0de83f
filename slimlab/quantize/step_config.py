"""The `quantize` step's config, config classes only: config.py validates a step with it without importing the step's
code (slimlab/quantize/step.py, which imports slimlab.config and torch)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimlab.quantize.configs import DEFAULT_ENGINE, DynamicConfig, Mode, Observer, StaticConfig

OWN_METHODS = ("dynamic", "static", "qat", "fp16", "bf16")


def methods() -> list[str]:
    """dynamic, static, qat, fp16, bf16, plus each registered non-torch engine (onnxruntime: static PTQ through it)."""
    from slimlab.quantize.engines import engine_names  # the registry, asked when a config is validated
    from slimlab.quantize.qconfigs import EAGER_BACKENDS

    return [*OWN_METHODS, *(e for e in engine_names() if e not in (*EAGER_BACKENDS, "auto"))]


class QuantizeStepConfig(BaseModel):
    """One quantization method and its options; fields a method does not use are ignored by it."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)  # slimlab.config.Strict's

    method: str = Field("static", description="dynamic | static | qat | fp16 | bf16 | onnxruntime")
    engine: Literal["x86", "fbgemm", "qnnpack", "pt2e", "auto"] = Field(
        DEFAULT_ENGINE, description="static: torch.ao x86/fbgemm/qnnpack, pt2e (torchao) or auto (the fastest accurate engine here); "
                           "qat: x86/fbgemm/qnnpack or pt2e; dynamic: x86/fbgemm/qnnpack")
    auto_tolerance_db: float = Field(3.0, ge=0, description="engine auto: engines within this logit SQNR of the best may be chosen")
    mode: Mode = "auto"
    observer: Observer = "histogram"
    per_channel: bool = True
    dynamic_dtype: Literal["int8", "float16"] = Field("int8", description="dynamic only: weight dtype")
    calibration_batches: int = Field(32, gt=0)
    calibration_batch_size: int = Field(64, gt=0)
    skip: list[str] = Field(default_factory=list, description="module names or globs left in float")
    auto_skip_worst_k: int = Field(0, ge=0, description="static: also leave the k layers with the lowest local SQNR in float")
    qat_epochs: int = Field(2, gt=0)
    qat_lr: float = Field(0.005, gt=0, description="peak learning rate of the QAT fine-tuning (cosine to zero)")
    freeze_bn_epoch: int = Field(1, ge=0, description="QAT epoch (0-based) from which BN statistics stop updating")
    freeze_observer_epoch: int = Field(1, ge=0, description="QAT epoch (0-based) from which quantization scales stop updating")
    error_batches: int | None = Field(None, gt=0, description="test batches for the logit error; default: the whole test set")
    layer_table_batches: int = Field(2, gt=0, description="test batches of 64 images for the per-layer table")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in methods():
            raise ValueError(f"unknown method {value!r}; one of: {', '.join(methods())}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _dynamic_default_engine(cls, data):
        """Method dynamic without an engine gets DynamicConfig's (torch.ao), whatever DEFAULT_ENGINE is: no other
        engine has dynamic kernels, so a changed default must not turn a valid config into an error."""
        if isinstance(data, dict) and data.get("method") == "dynamic" and "engine" not in data:
            return {**data, "engine": DynamicConfig.model_fields["engine"].default}
        return data

    @model_validator(mode="after")
    def _options_fit_method(self):
        if self.auto_skip_worst_k and self.method != "static":
            raise ValueError(f"auto_skip_worst_k works with method static only, not {self.method!r}")
        if self.engine in ("pt2e", "auto") and self.method == "dynamic" or self.engine == "auto" and self.method == "qat":
            raise ValueError(f"engine {self.engine!r} does not work with method {self.method!r}")
        if (self.skip or self.auto_skip_worst_k) and self.method in ("fp16", "bf16"):
            raise ValueError(f"skip has no meaning for method {self.method!r}: the whole model is cast")
        return self

    def static_config(self, batch_sizes: tuple[int, ...] = (1, 64)) -> StaticConfig:
        engine = self.engine if self.method == "static" else self.method
        return StaticConfig(engine=engine, observer=self.observer, per_channel=self.per_channel, skip=tuple(self.skip),
                            auto_skip_worst_k=self.auto_skip_worst_k, mode=self.mode, auto_batch_sizes=batch_sizes,
                            auto_tolerance_db=self.auto_tolerance_db)
