"""Registry of static-quantization engines: name -> quantize(model, StaticConfig, calibration batches) -> nn.Module."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from slimlab.errors import ConfigError

# An engine returns the quantized model; one whose result is not TorchScript (an ONNX Runtime session) gives it a
# `deployable(example) -> (bytes, format)` method so the run saves and sizes the engine's own file instead.
Engine = Callable[[nn.Module, "StaticConfig", Sequence[torch.Tensor]], nn.Module]  # noqa: F821
_ENGINES: dict[str, Engine] = {}


def register_engine(*names: str):
    """Register `fn(model, config, calibration_batches) -> quantized model` under one or more engine names."""

    def wrap(fn: Engine) -> Engine:
        for name in names:
            _ENGINES[name] = fn
        return fn

    return wrap


def _load_builtin() -> None:
    """The built-in engines' modules, which register themselves on import (their compiled dependencies load then)."""
    import importlib

    for name in ("torch_engine", "pt2e", "onnx_runtime", "auto"):
        importlib.import_module(f"slimlab.quantize.{name}")


def engine_names() -> list[str]:
    """Registered engine names."""
    _load_builtin()
    return sorted(_ENGINES)


def engine_docs() -> dict[str, str]:
    """Engine names with the first line of their function's docstring, for listings."""
    _load_builtin()
    return {name: ((_ENGINES[name].__doc__ or "").strip().splitlines() or [""])[0] for name in engine_names()}


def get_engine(name: str) -> Engine:
    """The engine registered as `name`; a ConfigError lists the known ones otherwise."""
    _load_builtin()
    if name not in _ENGINES:
        raise ConfigError(f"unknown quantization engine {name!r}; registered: {', '.join(engine_names())}")
    return _ENGINES[name]
