"""Training extras: features that plug into the one loop as callbacks, each one file in this package.

An extra registers a builder that returns its callback for a config (or None when the config leaves it off) and
declares, where it is defined, whether it may run while fine-tuning a pruned or fake-quantized model and which config
updates switch it off. Compression steps ask `slimlab.train.fine_tuning_overrides`, so a new extra cannot be forgotten by a list.
The package imports no torch: TrainConfig composes the extras' config fields from these files."""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

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
_BUILTIN_LOADED: list[bool] = []


def register_extra(name: str, *, fine_tuning: bool, off: dict[str, Any], observes: bool = False):
    """Register `build(context) -> callback | None`. An extra that keeps its own copy of the weights (an average,
    slow weights) must say `fine_tuning=False`: retraining it would bring back weights a mask removed."""
    def add(build: Callable[[ExtraContext], Any]) -> Callable[[ExtraContext], Any]:
        _REGISTRY[name] = Extra(build, fine_tuning, dict(off), observes)
        return build
    return add


def extras() -> dict[str, Extra]:
    """Every registered extra by name; the package's modules register themselves on first use."""
    if not _BUILTIN_LOADED:  # each module registers itself on import, so no list of them is kept anywhere
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _BUILTIN_LOADED.append(True)
    return dict(_REGISTRY)


def plugin_fields(package: str) -> tuple[type, ...]:
    """The config-field classes (`...Fields`, pydantic) that the modules of a plug-in package define: TrainConfig is
    composed from them, so an extra or optimizer that brings a key needs no edit anywhere else."""
    root = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(root.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        found += [value for name, value in vars(module).items()
                  if name.endswith("Fields") and isinstance(value, type) and value.__module__ == module.__name__]
    return tuple(found)


def build_extras(context: ExtraContext) -> tuple[list, list]:
    """The callbacks of the extras the config switches on: (those that change the weights, those that observe them)."""
    acting, observing = [], []
    for extra in extras().values():
        callback = extra.build(context)
        if callback is not None:
            (observing if extra.observes else acting).append(callback)
    return acting, observing

