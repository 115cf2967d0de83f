"""Speed and size of CIFAR ResNet18 in float32, static int8 (torch x86), ONNX Runtime QDQ int8 and bf16, side by side.

    python bench/quantize_speed.py [--threads 2] [--repeats 30]

Random weights: speed and size do not depend on them. Medians of `--repeats` timed runs after `--warmup`, at a fixed
thread count, via slimlab.measure.measure_latency; speedups are against the faster of the two float32 layouts.
"""
from __future__ import annotations

import argparse
import copy
import platform

import torch

import slimlab
from slimlab.measure import cpu_model, measure_latency, serialize_deployable
from slimlab.quantize import StaticConfig, quantize_onnxruntime, quantize_static_, to_reduced_float

TARGETS = {1: 3.0, 64: 8.0}  # int8 speedup the issue asks for at each batch size; and at least 3.9x smaller
FLOAT_ROWS = ("float32 NCHW", "float32 channels_last")


def build_variants(calibration_batches: int) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (model, takes channels_last input)."""
    torch.manual_seed(0)
    model = slimlab.create_model("resnet18").eval()
    calibration = [torch.randn(32, 3, 32, 32) for _ in range(calibration_batches)]
    int8 = quantize_static_(copy.deepcopy(model), StaticConfig(engine="x86", observer="histogram", per_channel=True), calibration)
    ort = quantize_onnxruntime(copy.deepcopy(model), StaticConfig(engine="onnxruntime", observer="minmax", per_channel=True), calibration)
    bf16 = to_reduced_float(copy.deepcopy(model).to(memory_format=torch.channels_last), "bf16")
    return {"float32 NCHW": (model, False), "float32 channels_last": (copy.deepcopy(model).to(memory_format=torch.channels_last), True),
            "int8 torch x86 (eager, per-channel)": (int8, False), "int8 ONNX Runtime QDQ": (ort, False), "bf16": (bf16, True)}


def file_size(model: torch.nn.Module, example: torch.Tensor) -> int:
    blob = model.deployable(example)[0] if hasattr(model, "deployable") else serialize_deployable(model, example)[0]
    return len(blob)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--calibration-batches", type=int, default=2)
    args = parser.parse_args()

    variants = build_variants(args.calibration_batches)
    example = torch.randn(1, 3, 32, 32)
    sizes = {name: file_size(model, example) for name, (model, _) in variants.items()}
    times = {name: {} for name in variants}
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, 32, 32)
        for name, (model, channels_last) in variants.items():
            inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            times[name][batch] = measure_latency(model, inp, args.warmup, args.repeats, args.threads)["median_ms"]

    base = {b: min(times[f][b] for f in FLOAT_ROWS) for b in args.batch_sizes}
    base_size = sizes["float32 NCHW"]
    print(f"CIFAR ResNet18, {cpu_model()}, torch {torch.__version__}, {args.threads} threads, median of {args.repeats} "
          f"after {args.warmup} warm-up, python {platform.python_version()}")
    head = "".join(f" | b{b} ms | b{b} speedup" for b in args.batch_sizes)
    print(f"| variant{head} | size MB | size ratio |")
    print("|---" * (1 + 2 * len(args.batch_sizes) + 2) + "|")
    for name in variants:
        cells = "".join(f" | {times[name][b]:.2f} | {base[b] / times[name][b]:.2f}x" for b in args.batch_sizes)
        print(f"| {name}{cells} | {sizes[name] / 1e6:.2f} | {base_size / sizes[name]:.2f}x |")
    int8 = "int8 torch x86 (eager, per-channel)"
    verdicts = [f"b{b} {base[b] / times[int8][b]:.2f}x (target {t}x)" for b, t in TARGETS.items() if b in base]
    print(f"static int8 vs best float32: {', '.join(verdicts)}, size {base_size / sizes[int8]:.2f}x smaller (target 3.9x)")


if __name__ == "__main__":
    main()
