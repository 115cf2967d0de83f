"""Post-training static quantization through any registered engine, with automatic skipping of the worst layers."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from slimlab.errors import ConfigError
from slimlab.quantize.configs import StaticConfig
from slimlab.quantize.engines import get_engine
from slimlab.quantize.error import layer_table
from slimlab.quantize.qconfigs import EAGER_BACKENDS

SENSITIVITY_BATCHES = 2  # calibration batches used to rank layers; local SQNR is stable long before that


def quantize_static_(model: nn.Module, config: StaticConfig, calibration_batches: Iterable[torch.Tensor]) -> nn.Module:
    """Static int8: fuse, observe the calibration batches, convert. Returns the model to use (eager: the same object)."""
    batches = [x.cpu() for x in calibration_batches]
    if not batches:
        raise ConfigError("static quantization needs at least one calibration batch")
    engine = get_engine(config.engine)
    if config.auto_skip_worst_k:
        config = config.model_copy(update={"skip": (*config.skip, *worst_layers(model, config, batches)), "auto_skip_worst_k": 0})
    return engine(model, config, batches)


def worst_layers(model: nn.Module, config: StaticConfig, batches: list[torch.Tensor]) -> list[str]:
    """The `config.auto_skip_worst_k` quantized layers with the lowest local SQNR on calibration data (never test data)."""
    from slimlab.quantize.torch_engine import float_reference

    if config.engine not in EAGER_BACKENDS:
        raise ConfigError(f"auto_skip_worst_k needs a torch engine ({', '.join(EAGER_BACKENDS)}), not {config.engine!r}")
    trial = get_engine(config.engine)(copy.deepcopy(model), config.model_copy(update={"auto_skip_worst_k": 0}), batches)
    rows = [r for r in layer_table(float_reference(model, trial), trial, batches[:SENSITIVITY_BATCHES]) if "local_sqnr_db" in r]
    return [r["name"] for r in sorted(rows, key=lambda r: r["local_sqnr_db"])[:config.auto_skip_worst_k]]
