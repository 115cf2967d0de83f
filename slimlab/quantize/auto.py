"""`engine: auto`: quantize with every int8 engine available here, time each, keep the fastest of the accurate ones."""
from __future__ import annotations

import importlib.util
import math
from typing import Sequence

import torch
from torch import nn

from slimlab.errors import SlimlabError
from slimlab.quantize import coverage
from slimlab.quantize.configs import StaticConfig
from slimlab.quantize.engines import register_engine
from slimlab.quantize.error import compare_logits

# The engines auto chooses among, each with the module it needs; the deprecated torch.ao eager/FX path is one of them.
CANDIDATES = {"x86": "torch", "onnxruntime": "onnxruntime", "pt2e": "torchao"}
AUTO_WARMUP, AUTO_REPEATS = 3, 10  # a ranking, not a figure for the record: short timings


def available_engines() -> list[str]:
    """Candidate engines whose package is installed."""
    return [name for name, module in CANDIDATES.items() if importlib.util.find_spec(module) is not None]


def _batch(images: torch.Tensor, size: int) -> torch.Tensor:
    return images[torch.arange(size) % len(images)]


COVERAGE_SLACK = 0.05  # engines within this share of int8 weights of the most complete one set the SQNR bar


def choose(candidates: dict[str, dict], tolerance_db: float) -> str:
    """The fastest engine among those whose SQNR is within `tolerance_db` of the best: the one whose worst ratio to the
    fastest latency at any batch size is lowest. The best SQNR is that of the engines that left no more weights float
    than the most complete one (by COVERAGE_SLACK): a layer left float raises the SQNR, so an engine that quantized a
    tenth of the weights would otherwise set a bar the engines that quantized all of them cannot meet."""
    most = max(c.get("int8_fraction", 1.0) for c in candidates.values())
    best_sqnr = max(c["sqnr_db"] for c in candidates.values() if c.get("int8_fraction", 1.0) >= most - COVERAGE_SLACK)
    accurate = {n: c for n, c in candidates.items() if c["sqnr_db"] >= best_sqnr - tolerance_db}
    sizes = next(iter(candidates.values()))["latency_ms"].keys()
    fastest = {b: min(c["latency_ms"][b] for c in accurate.values()) for b in sizes}
    return min(accurate, key=lambda n: max(accurate[n]["latency_ms"][b] / fastest[b] for b in sizes))


@register_engine("auto")
def quantize_auto(model: nn.Module, config: StaticConfig, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """Quantize with each available engine, time it at `config.auto_batch_sizes` and measure its logit error on the
    calibration (validation) images; return the chosen model, with every candidate's figures on `.engine_selection`."""
    from slimlab.measure import measure_latency
    from slimlab.quantize.static import quantize_static

    images = torch.cat([x.cpu() for x in calibration])
    float_model = model.cpu().eval()
    models, figures, failed = {}, {}, {}
    for name in available_engines():
        try:  # an engine that cannot take this model (an op it lacks, a compiler error) is skipped, with the reason
            quantized = quantize_static(model, config.model_copy(update={"engine": name}), calibration)
            error = compare_logits(float_model, quantized, [x.cpu() for x in calibration])
            latency = {b: measure_latency(quantized, _batch(images, b), AUTO_WARMUP, AUTO_REPEATS, attempts=1)["median_ms"]
                       for b in config.auto_batch_sizes}
        except Exception as exc:  # noqa: BLE001 (any engine's failure is a reason to try the next one)
            failed[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            continue
        models[name] = quantized
        rows = coverage.per_module(coverage.layer_coverage(quantized), float_model)
        int8 = sum(r["weights"] for r in rows if r["weight_dtype"] not in coverage.FLOAT_DTYPES)
        figures[name] = {"sqnr_db": error["sqnr_db"] if math.isfinite(error["sqnr_db"]) else 999.0,
                         "top1_agreement": error["top1_agreement"], "latency_ms": latency,
                         "int8_fraction": int8 / (sum(r["weights"] for r in rows) or 1)}
    if not figures:
        raise SlimlabError("engine auto: no int8 engine could quantize this model: "
                           + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    chosen = choose(figures, config.auto_tolerance_db)
    result = models[chosen]
    result.engine_selection = {"chosen": chosen, "tolerance_db": config.auto_tolerance_db, "candidates": figures,
                               "failed": failed}
    return result
