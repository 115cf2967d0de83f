"""Training extras: features that plug into the one loop as callbacks, each one file in this package.

An extra registers a builder that returns its callback for a config (or None when the config leaves it off) and
declares, where it is defined, whether it may run while fine-tuning a pruned or fake-quantized model and which config
updates switch it off. Compression steps ask `slimlab.train.fine_tuning_overrides`, so a new extra cannot be forgotten by a list.
An extra's config keys are a class in fields.py (config classes only), which TrainConfig names as a base."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from slimlab.plugins import package_modules

if TYPE_CHECKING:
    from torch import nn

    from slimlab.config import TrainConfig


@dataclass(frozen=True)
class ExtraContext:
    """What a builder may read: the model (resumed weights loaded), the config, the resumed checkpoint's extra
    states by key, and the optimizer steps already taken and planned in all."""

    model: "nn.Module"
    cfg: "TrainConfig"
    states: dict[str, Any]
    start_step: int
    total_steps: int


@dataclass(frozen=True)
class Extra:
    build: Callable[[ExtraContext], Any]
    fine_tuning: bool  # may it run on a pruned or fake-quantized model
    off: dict[str, Any]  # the config updates that switch it off
    observes: bool  # only reads the weights (an average): its hooks run after the other callbacks' and see their weights


_REGISTRY: dict[str, Extra] = {}


def register_extra(name: str, *, fine_tuning: bool, off: dict[str, Any], observes: bool = False):
    """Register `build(context) -> callback | None`. An extra that keeps its own copy of the weights (an average,
    slow weights) must say `fine_tuning=False`: retraining it would bring back weights a mask removed."""
    def add(build: Callable[[ExtraContext], Any]) -> Callable[[ExtraContext], Any]:
        _REGISTRY[name] = Extra(build, fine_tuning, dict(off), observes)
        return build
    return add


def extras() -> dict[str, Extra]:
    """Every registered extra by name; the package's modules register themselves on first use."""
    package_modules(__name__)  # each module registers itself on import
    return dict(_REGISTRY)


def build_extras(context: ExtraContext) -> tuple[list, list]:
    """The callbacks of the extras the config switches on: (those that change the weights, those that observe them)."""
    acting, observing = [], []
    for extra in extras().values():
        callback = extra.build(context)
        if callback is not None:
            (observing if extra.observes else acting).append(callback)
    return acting, observing

