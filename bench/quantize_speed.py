"""Speed, size and compile time of every deployment of one CNN slimlab measures, against both float baselines.

    python bench/quantize_speed.py                 # CIFAR ResNet18, random weights, 2 threads, median of 30 after 10 warm-up
    python bench/quantize_speed.py --quick         # a smoke test: ResNet-20 on 16x16 images, 3 timed runs (figures mean nothing)

Rows: fp32 eager, fp32 torch.compile (inductor freezing), int8 torch.ao eager x86, int8 PT2E (torchao
X86InductorQuantizer, lowered by torch.compile with freezing), int8 ONNX Runtime QDQ, bf16; at batch 1 and 64. Every
speedup names its baseline (eager or compiled fp32). Latency is slimlab.measure.measure_latency's (median after
warm-up, retried when the machine was busy; figures still disturbed are marked '*'). `build s` is quantization (or
export) time, `first calls s` the first call at each batch size (torch.compile compiles, ONNX Runtime builds its
session). Size is the deployable file a run would save (TorchScript, .pt2 or .onnx). Then `engine: auto` is run as a
quantize step runs it, and a check line says whether its pick is within 5% of the fastest int8 engine at each batch size.
Random weights: speed and size do not depend on them.
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

import slimlab
from slimlab.measure import cpu_model, measure_latency, serialize_deployable
from slimlab.quantize import StaticConfig, quantize_static, to_reduced_float
from slimlab.quantize.auto import CANDIDATES
from slimlab.quantize.pt2e import Lowered, export_program, save_program

EAGER, COMPILED = "fp32 eager", "fp32 torch.compile + freezing"
INT8_ROWS = {"x86": "int8 torch.ao eager x86", "pt2e": "int8 PT2E + torch.compile", "onnxruntime": "int8 ONNX Runtime QDQ"}
TARGETS = {1: 3.0, 64: 3.6}  # speedup over compiled fp32 the issue asks of auto's pick at each batch size
SIZE_TARGET, AUTO_MARGIN = 3.9, 1.05
CPU_FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_line() -> str:
    """The CPU and its int8/bf16 instruction sets: the figures mean nothing without them."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    present = [f for f in CPU_FLAGS if f in flags]
    return f"CPU: {cpu_model()}; flags: {', '.join(present) or 'none of ' + ', '.join(CPU_FLAGS)}"


def builders(model: torch.nn.Module, calibration: list[torch.Tensor]) -> dict:
    """row name -> (build the model to time, inputs in channels_last)."""
    def int8(engine: str):
        return lambda: quantize_static(model, StaticConfig(engine=engine), calibration)

    return {EAGER: (lambda: model, False), COMPILED: (lambda: Lowered(copy.deepcopy(model)), False),
            **{name: (int8(engine), False) for engine, name in INT8_ROWS.items()},
            "bf16": (lambda: to_reduced_float(copy.deepcopy(model).to(memory_format=torch.channels_last), "bf16"), True)}


def file_bytes(built: torch.nn.Module, float_model: torch.nn.Module, example: torch.Tensor) -> int:
    """Bytes of the file a run would save: the engine's own (.pt2, .onnx), a float .pt2 for compiled fp32 (what
    torch.compile or AOTInductor would load), TorchScript otherwise."""
    if hasattr(built, "deployable"):
        return len(built.deployable(example)[0])
    if isinstance(built, Lowered):
        return len(save_program(export_program(float_model, example)))
    return len(serialize_deployable(built, example)[0])


def measure_row(build, channels_last: bool, inputs: dict, args, float_model) -> dict:
    """Build one variant, time its first calls and its latency at each batch size, size its file."""
    started = time.perf_counter()
    built = build()
    build_s = time.perf_counter() - started
    feed = {b: x.contiguous(memory_format=torch.channels_last) if channels_last else x for b, x in inputs.items()}
    started = time.perf_counter()
    with torch.inference_mode():
        for x in feed.values():
            built(x)
    first_s = time.perf_counter() - started
    timings = {b: measure_latency(built, x, args.warmup, args.repeats, args.threads) for b, x in feed.items()}
    return {"timings": timings, "build_s": build_s, "first_s": first_s, "bytes": file_bytes(built, float_model, inputs[min(inputs)])}


def print_table(rows: dict, batches: list[int]) -> None:
    eager, compiled, size = rows[EAGER]["timings"], rows[COMPILED]["timings"], rows[EAGER]["bytes"]
    header = (["variant"] + [f"b{b} ms" for b in batches] + [f"b{b} vs eager" for b in batches]
              + [f"b{b} vs compiled" for b in batches] + ["size MB", "smaller than fp32 eager", "build s", "first calls s"])
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, row in rows.items():
        t = row["timings"]
        cells = [name] + [f"{t[b]['median_ms']:.2f}{'*' if t[b]['disturbed'] else ''}" for b in batches]
        cells += [f"{eager[b]['median_ms'] / t[b]['median_ms']:.2f}x" for b in batches]
        cells += [f"{compiled[b]['median_ms'] / t[b]['median_ms']:.2f}x" for b in batches]
        cells += [f"{row['bytes'] / 1e6:.2f}", f"{size / row['bytes']:.2f}x", f"{row['build_s']:.1f}", f"{row['first_s']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    for name, row in rows.items():
        for b, lat in row["timings"].items():
            if lat["disturbed"]:
                print(f"* {name} b{b}: {lat['disturbed']}")


def check_auto(model, calibration: list[torch.Tensor], rows: dict, batches: list[int]) -> None:
    """Run engine auto as a quantize step does; say what it picked and whether the pick is within 5% of the fastest
    int8 engine of the table at each batch size, and how it fares against the issue's targets."""
    started = time.perf_counter()
    picked = quantize_static(model, StaticConfig(engine="auto", auto_batch_sizes=tuple(batches)), calibration).engine_selection
    seconds = time.perf_counter() - started
    figures = "; ".join(f"{n}: sqnr {c['sqnr_db']:.1f} dB, " + ", ".join(f"b{b} {ms:.2f} ms" for b, ms in c["latency_ms"].items())
                        for n, c in picked["candidates"].items())
    print(f"\nengine auto picked {picked['chosen']} in {seconds:.1f} s (its own short timings: {figures})")
    ms = {e: {b: rows[INT8_ROWS[e]]["timings"][b]["median_ms"] for b in batches} for e in picked["candidates"] if e in INT8_ROWS}
    own = ms[picked["chosen"]]
    for b in batches:
        fastest = min(ms, key=lambda e: ms[e][b])
        verdict = "yes" if own[b] <= AUTO_MARGIN * ms[fastest][b] else "NO"
        print(f"check b{b}: auto's pick {own[b]:.2f} ms, fastest int8 {fastest} {ms[fastest][b]:.2f} ms: "
              f"within 5%: {verdict}")
    compiled, pick = rows[COMPILED], rows[INT8_ROWS[picked["chosen"]]]
    verdicts = [f"b{b} {compiled['timings'][b]['median_ms'] / own[b]:.2f}x (target {t}x)" for b, t in TARGETS.items() if b in own]
    print(f"auto's pick vs fp32 compiled: {', '.join(verdicts)}; file {rows[EAGER]['bytes'] / pick['bytes']:.2f}x smaller "
          f"than fp32 eager (target {SIZE_TARGET}x)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--calibration-batches", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke test: resnet20, 16x16, batches 1 and 4, 3 timed runs")
    args = parser.parse_args()
    if args.quick:
        args.model, args.image_size, args.repeats, args.warmup, args.batch_sizes, args.calibration_batches = "resnet20", 16, 3, 1, [1, 4], 1
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch-sizes, --repeats and --threads must be positive")
    return args


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = slimlab.create_model(args.model).eval()
    shape = (3, args.image_size, args.image_size)
    calibration = [torch.randn(32, *shape) for _ in range(args.calibration_batches)]
    inputs = {b: torch.randn(b, *shape) for b in sorted(args.batch_sizes)}
    loadavg = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "?"
    rows = {}
    for name, (build, channels_last) in builders(model, calibration).items():
        rows[name] = measure_row(build, channels_last, inputs, args, model)
        print(f"  {name}: built in {rows[name]['build_s']:.1f} s, first calls {rows[name]['first_s']:.1f} s", flush=True)
    print(f"\n{args.model} at {args.image_size}x{args.image_size}, random weights, {args.threads} threads, median of "
          f"{args.repeats} after {args.warmup} warm-up; torch {torch.__version__}, python {platform.python_version()}")
    print(cpu_line())
    print(f"loadavg before: {loadavg}; after: {Path('/proc/loadavg').read_text().strip() if Path('/proc/loadavg').exists() else '?'}")
    print_table(rows, sorted(args.batch_sizes))
    check_auto(model, calibration, rows, sorted(args.batch_sizes))
    print(f"(auto chooses among the installed engines of {', '.join(CANDIDATES)})")


if __name__ == "__main__":
    main()
