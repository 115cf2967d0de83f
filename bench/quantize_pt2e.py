"""Int8 on PyTorch's current stack against both float baselines: CIFAR ResNet18 (random weights) at batch 1 and 64.

    python bench/quantize_pt2e.py [--model resnet18] [--repeats 30] [--threads 2]

Rows: fp32 eager, fp32 torch.compile (inductor freezing), int8 torch.ao eager x86, int8 ONNX Runtime QDQ, int8 PT2E
(torchao X86InductorQuantizer) + torch.compile with freezing. Speedups name their baseline; the compile column is the
time of the first calls (compilation) at both batch sizes. Figures taken beside other work are marked with '*'.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch

import slimlab
from slimlab.measure import cpu_model, measure_latency
from slimlab.quantize import StaticConfig, quantize_static
from slimlab.quantize.pt2e import Lowered

BATCHES = (1, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-batches", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = slimlab.create_model(args.model).eval()
    calibration = [torch.randn(32, 3, 32, 32) for _ in range(args.calibration_batches)]
    inputs = {b: torch.randn(b, 3, 32, 32) for b in BATCHES}

    variants = {"fp32 eager": lambda: model,
                "fp32 torch.compile + freezing": lambda: Lowered(copy.deepcopy(model)),
                "int8 torch.ao eager x86": lambda: quantize_static(model, StaticConfig(engine="x86"), calibration),
                "int8 ONNX Runtime QDQ": lambda: quantize_static(model, StaticConfig(engine="onnxruntime"), calibration),
                "int8 PT2E + torch.compile": lambda: quantize_static(model, StaticConfig(engine="pt2e"), calibration)}
    rows = {}
    for name, build in variants.items():
        started = time.perf_counter()
        built = build()
        quantize_s = time.perf_counter() - started
        started = time.perf_counter()
        with torch.inference_mode():
            for b in BATCHES:  # the first call at each size compiles (torch.compile) or builds the session (ORT)
                built(inputs[b])
        first_s = time.perf_counter() - started
        timings = {b: measure_latency(built, inputs[b], args.warmup, args.repeats, args.threads) for b in BATCHES}
        rows[name] = (timings, quantize_s, first_s, size_mb(built, inputs[1]))
        print(f"  {name}: done ({quantize_s:.1f} s to build, {first_s:.1f} s first calls)", flush=True)

    print(f"\n{args.model}, {args.threads} threads, median of {args.repeats} after {args.warmup} warm-up; "
          f"CPU: {cpu_model()}; VNNI: {'yes' if 'vnni' in open('/proc/cpuinfo').read() else 'no'}, "
          f"AMX: {'yes' if 'amx' in open('/proc/cpuinfo').read() else 'no'}")
    print(f"loadavg before: {LOADAVG}; after: {open('/proc/loadavg').read().strip()}")
    eager, compiled = rows["fp32 eager"][0], rows["fp32 torch.compile + freezing"][0]
    header = ["variant"] + [f"b{b} ms" for b in BATCHES] + [f"b{b} vs eager" for b in BATCHES] + \
             [f"b{b} vs compiled" for b in BATCHES] + ["size MB", "build s", "first calls s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, (timings, quantize_s, first_s, size) in rows.items():
        ms = [timings[b]["median_ms"] for b in BATCHES]
        marks = ["*" if timings[b]["disturbed"] else "" for b in BATCHES]
        cells = [name] + [f"{m:.2f}{k}" for m, k in zip(ms, marks)]
        cells += [f"{eager[b]['median_ms'] / timings[b]['median_ms']:.2f}x" for b in BATCHES]
        cells += [f"{compiled[b]['median_ms'] / timings[b]['median_ms']:.2f}x" for b in BATCHES]
        cells += [f"{size:.2f}" if size else "-", f"{quantize_s:.1f}", f"{first_s:.1f}"]
        print("| " + " | ".join(cells) + " |")
    disturbed = {f"{n} b{b}": t[b]["disturbed"] for n, (t, *_) in rows.items() for b in BATCHES if t[b]["disturbed"]}
    for key, why in disturbed.items():
        print(f"* {key}: {why}")


def size_mb(model, example) -> float | None:
    """Bytes of the deployable file: the engine's own (.onnx, .pt2), TorchScript for torch.ao, none for compiled fp32."""
    if hasattr(model, "deployable"):
        return len(model.deployable(example)[0]) / 1e6
    if isinstance(model, Lowered):
        return None
    from slimlab.measure import serialize_deployable

    return len(serialize_deployable(model, example)[0]) / 1e6


LOADAVG = open("/proc/loadavg").read().strip() if os.path.exists("/proc/loadavg") else "?"

if __name__ == "__main__":
    main()
