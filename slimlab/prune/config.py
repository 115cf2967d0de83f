"""The `prune` step's config: method (a name in the method registry), scope, amount, schedule, what follows each round,
controls, layer selection."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimlab.prune.methods import get_method
from slimlab.prune.selection import LayerFilter


class PruneStepConfig(BaseModel):
    """One pruning experiment applied to the trained model; every field enters the run's hash."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    method: str = Field("l1", description="a name in slimlab.prune.methods' registry (docs/pruning.md lists them)")
    scope: Literal["local", "global"] = "local"
    amount: float = Field(0.5, ge=0, lt=1, description="final fraction of the selected weights (or channels) removed")
    rounds: int = Field(1, ge=1, description="iterative: pruning rounds; gradual: pruning events during training")
    schedule: Literal["oneshot", "iterative", "gradual"] = "oneshot"
    after_round: Literal["finetune", "lr_rewind", "weight_rewind", "none"] = "finetune"
    rewind_epoch: int = Field(0, ge=0, description="weight_rewind: 0 = initial weights, k = weights after epoch k (late rewinding)")
    control: Literal["none", "reinit", "random_mask"] = Field(
        "none", description="lottery-ticket controls, in the last round: fresh random weights (reinit), "
                            "or a random mask with the same per-layer sparsity (random_mask)")
    finetune_epochs: int = Field(1, ge=1)
    finetune_lr: float = Field(0.01, gt=0)
    gradient_batches: int = Field(8, ge=1, description="taylor: training batches whose |w * dL/dw| is averaged")
    norm: float = Field(1.0, ge=1, description="ln_structured: the n of the Ln norm ranking channels")
    residual_channels: bool = Field(True, description="ln_structured: also prune channels tied across residual adds, as one group")
    round_to: int = Field(1, ge=1, description="ln_structured: keep channel counts at multiples of this")
    engine: Literal["auto", "slimlab", "torch_pruning"] = Field(
        "auto", description="structured: slimlab's channel tracer, Torch-Pruning, or auto (both, keeping the one that removed more parameters)")
    gradual_end: float = Field(0.75, gt=0, le=1, description="gradual: fraction of the retraining by which the final sparsity is reached")
    spare_first_conv: bool = False
    spare_classifier: bool = False
    layer_types: list[Literal["conv", "linear"]] = Field(default_factory=lambda: ["conv", "linear"], min_length=1)
    include: list[str] = Field(default_factory=lambda: ["*"], min_length=1, description="module-name globs to prune")
    exclude: list[str] = Field(default_factory=list, description="module-name globs never pruned")

    @field_validator("method")
    @classmethod
    def _registered(cls, name: str) -> str:
        get_method(name)  # one line listing the registered names otherwise
        return name

    @model_validator(mode="after")
    def _consistent(self):
        if self.schedule == "oneshot" and self.rounds != 1:
            raise ValueError("rounds > 1 needs schedule 'iterative' or 'gradual'")
        if self.rewind_epoch and self.after_round != "weight_rewind":
            raise ValueError("rewind_epoch applies only to after_round 'weight_rewind'")
        if self.control != "none" and self.after_round == "none":
            raise ValueError("a control needs retraining; set after_round to weight_rewind, lr_rewind or finetune")
        if self.schedule == "gradual" and self.control != "none":
            raise ValueError("controls replace the last round's mask or weights; the gradual schedule has no last round, "
                             "use schedule 'iterative'")
        if self.schedule == "gradual" and self.after_round == "none":
            raise ValueError("gradual pruning happens during training; set after_round to finetune, lr_rewind or weight_rewind")
        if self.structured and (self.after_round == "weight_rewind" or self.control != "none" or self.schedule == "gradual"):
            raise ValueError(f"{self.method} removes channels, so weight_rewind, controls and the gradual schedule "
                             "(which need masks) do not apply")
        return self

    @property
    def structured(self) -> bool:
        """Whether the method removes whole channels (a smaller dense model) rather than zeroing single weights."""
        return get_method(self.method).kind == "structured"

    def layer_filter(self) -> LayerFilter:
        """The layer selection as the verbs take it."""
        return LayerFilter(tuple(self.layer_types), tuple(self.include), tuple(self.exclude), self.spare_first_conv, self.spare_classifier)
