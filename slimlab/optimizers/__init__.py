"""Optimizer registry: `train.optimizer` names a factory registered here; each factory is one file in this package.

The registry imports no torch: config validation reads the names, and a factory's file is only imported when it is
looked up. A factory declares whether it may fine-tune a pruned or fake-quantized model (`fine_tuning`) and which of
its config keys are learning rates that scale with `train.lr` when a fine-tune picks its own peak rate; its config keys
are a class in fields.py (config classes only), which TrainConfig names as a base."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from slimlab.errors import ConfigError
from slimlab.plugins import package_modules

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimlab.config import TrainConfig

# A factory gets the model, the train config and a callable that returns a small batch of training images (only
# called by factories that need one: calling it draws from the loader).
Factory = Callable[["nn.Module", "TrainConfig", Callable[[], "torch.Tensor"]], "torch.optim.Optimizer"]


@dataclass(frozen=True)
class OptimizerEntry:
    factory: Factory
    fine_tuning: bool  # may it train a pruned or fake-quantized model (weights a mask or fake quantization constrains)
    rates: tuple[str, ...]  # config keys that are step sizes, scaled with train.lr by `peak_rates`


_REGISTRY: dict[str, OptimizerEntry] = {}


def register_optimizer(name: str, *, fine_tuning: bool, rates: tuple[str, ...] = ()) -> Callable[[Factory], Factory]:
    """Register `factory(model, cfg, example) -> Optimizer` as `train.optimizer: name`; the declaration is required."""
    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = OptimizerEntry(factory, fine_tuning, rates)
        return factory
    return add


def optimizers() -> dict[str, OptimizerEntry]:
    """Every registered optimizer by name."""
    package_modules(__name__)  # each module registers itself on import
    return dict(_REGISTRY)


def make_optimizer(model: "nn.Module", cfg: "TrainConfig", example: "torch.Tensor | Callable[[], torch.Tensor] | None" = None):
    """The optimizer `cfg.optimizer` names, over `model`'s trainable parameters."""
    entry = optimizers().get(cfg.optimizer)
    if entry is None:
        raise ConfigError(f"train.optimizer: unknown optimizer '{cfg.optimizer}'; known: {', '.join(sorted(optimizers()))}")
    if example is None or callable(example):
        return entry.factory(model, cfg, example)
    return entry.factory(model, cfg, lambda: example)


def decay_groups(params: list, cfg: "TrainConfig") -> list[dict]:
    """Two SGD groups: weights with decay, and batch-norm weights and biases without unless asked (decay on them only
    hurts small nets)."""
    decays = [p.ndim > 1 or cfg.decay_norm_and_bias for p in params]
    return [{"params": [p for p, d in zip(params, decays) if d], "weight_decay": cfg.weight_decay},
            {"params": [p for p, d in zip(params, decays) if not d], "weight_decay": 0.0}]
