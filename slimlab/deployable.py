"""A run's deployable file: its name by format, loading it back, and timing it (median, p90, and whether the
machine was busy meanwhile)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from slimlab import measure

def speedups(metrics: dict, batch_sizes) -> dict:
    """speedup_bN_vs_float_eager / _vs_float_compiled: the float baselines a quantize step timed over this model's latency."""
    out = {}
    for batch in batch_sizes:
        for baseline in ("eager", "compiled"):
            base, own = metrics.get(f"float_{baseline}_latency_b{batch}_median_ms"), metrics.get(f"latency_b{batch}_median_ms")
            if base and own:
                out[f"speedup_b{batch}_vs_float_{baseline}"] = base / own
    return out


MODEL_FILES = {"onnx": "model.onnx", "torch.export": "model.pt2"}  # the deployable file's name by format; others model.pt
DEFERRABLE_FORMATS = ("torchscript", "onnx", "torch.export")  # deployable files the latency stage can load back and time


def time_latency(model: nn.Module, cfg, example_of: Callable[[int], torch.Tensor]) -> tuple[dict, dict]:
    """Median and p90 latency and throughput at each of measure.batch_sizes, and the notes that say how: `latency`,
    and for figures timed while the machine was busy with other work, `latency_noisy` (why) and `latency_flagged`
    (the metric keys concerned, for `show`, `runs` and the report)."""
    threads = cfg.threads or measure.default_threads()
    metrics = {"latency_threads": threads}
    flagged, reasons, attempts = [], [], 0
    for batch in cfg.batch_sizes:
        example = example_of(batch)
        lat = measure.measure_latency(model, example, cfg.warmup, cfg.repeats, threads)
        keys = (f"latency_b{batch}_median_ms", f"latency_b{batch}_p90_ms", f"throughput_b{batch}_per_s")
        metrics.update(zip(keys, (lat["median_ms"], lat["p90_ms"], lat["throughput_per_s"])))
        attempts = max(attempts, lat["attempts"])
        if lat["disturbed"]:
            flagged += keys
            reasons.append(f"batch {batch}: {lat['disturbed']}")
    notes = {"latency": f"median and p90 of {cfg.repeats} timed forward passes after {cfg.warmup} warm-up, {threads} "
                        f"threads, {lat['timer']} on {example.device}"}
    if flagged:
        notes["latency_noisy"] = (f"timed while the machine was busy with other work, {attempts} attempt{'s' * (attempts > 1)}: "
                                  + "; ".join(reasons) + "; the figures may be too slow")
        notes["latency_flagged"] = flagged
    return metrics, notes


def load_deployable(folder: Path, device: torch.device) -> nn.Module:
    """A run's saved model.pt (TorchScript), model.onnx or model.pt2 (torch.export, lowered as the run timed it)."""
    if (folder / "model.pt2").exists():
        from slimlab.quantize.pt2e import load_program

        return load_program(folder / "model.pt2")
    if (folder / "model.onnx").exists():
        from slimlab.quantize.onnx_runtime import OnnxRuntimeModule

        return OnnxRuntimeModule((folder / "model.onnx").read_bytes())
    return torch.jit.load(str(folder / "model.pt"), map_location=device).eval()
