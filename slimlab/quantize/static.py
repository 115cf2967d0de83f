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

SENSITIVITY_BATCHES = 2  # calibration batches used to rank layers; local SQNR is stable long before that


def quantize_static(model: nn.Module, config: StaticConfig, calibration_batches: Iterable[torch.Tensor]) -> nn.Module:
    """Static int8: fuse, observe the calibration batches, convert. Returns a new model; `model` is left as it was."""
    batches = [x.cpu() for x in calibration_batches]
    if not batches:
        raise ConfigError("static quantization needs at least one calibration batch")
    model = copy.deepcopy(model)
    engine = get_engine(config.engine)
    worst: list[str] = []
    if config.auto_skip_worst_k:
        worst = worst_layers(model, config, batches)
        config = config.model_copy(update={"skip": (*config.skip, *worst), "auto_skip_worst_k": 0})
    quantized = engine(model, config, batches)
    quantized.slimlab_sensitivity_skip = worst  # the coverage record says these stayed float by sensitivity
    return quantized


quantize_static_ = quantize_static  # the old name, kept for existing scripts: it never worked in place


def worst_layers(model: nn.Module, config: StaticConfig, batches: list[torch.Tensor]) -> list[str]:
    """The `config.auto_skip_worst_k` quantized layers with the lowest local SQNR on calibration data (never test data)."""
    from slimlab.quantize.torch_engine import float_reference

    trial = get_engine(config.engine)(copy.deepcopy(model), config.model_copy(update={"auto_skip_worst_k": 0}), batches)
    if hasattr(trial, "layer_table"):  # an engine that ranks its own layers (pt2e)
        rows = trial.layer_table(batches[:SENSITIVITY_BATCHES])
    elif hasattr(trial, "layer_rows"):
        raise ConfigError(f"auto_skip_worst_k: the {config.engine!r} engine gives no per-layer error to rank layers by")
    else:
        rows = layer_table(float_reference(model, trial), trial, batches[:SENSITIVITY_BATCHES])
    rows = [r for r in rows if "local_sqnr_db" in r]
    return [r["name"] for r in sorted(rows, key=lambda r: r["local_sqnr_db"])[:config.auto_skip_worst_k]]
