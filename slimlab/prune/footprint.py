"""A pruned model's footprint in one flat dict: parameters, dense and non-zero MACs, latency per batch size."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from slimlab.config import MeasureConfig
from slimlab.measure import count_macs, count_parameters, measure_latency


def nonzero_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Per-sample multiply-accumulates whose weight is non-zero: the work a sparse kernel would still have to do."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        # Every weight element is used once per output position (conv) or output row (linear).
        positions = output.numel() // (module.out_channels if hasattr(module, "out_channels") else module.out_features)
        total += positions * int(torch.count_nonzero(module.weight))

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total // example.shape[0]


def footprint(model: nn.Module, example: torch.Tensor, measure: MeasureConfig, batch: Callable[[int], torch.Tensor]) -> dict:
    """Params, non-zero params, MACs, non-zero MACs and (if measure.latency) median latency per batch size; training mode
    kept. `timing_disturbed` lists the batch sizes timed while other work shared the CPUs, and why."""
    was_training = model.training
    try:
        result = {**count_parameters(model), **count_macs(copy.deepcopy(model), example)}
        model.eval()
        result["nonzero_macs"] = nonzero_macs(model, example)
        if measure.latency:
            for size in measure.batch_sizes:
                timing = measure_latency(model, batch(size), measure.warmup, measure.repeats, measure.threads)
                result[f"latency_b{size}_median_ms"] = timing["median_ms"]
                if timing["disturbed"]:
                    result.setdefault("timing_disturbed", []).append(f"batch {size}: {timing['disturbed']}")
    finally:
        model.train(was_training)
    return result
