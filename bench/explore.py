"""`slimlab explore` beside Intel Neural Compressor's accuracy-driven `autotune`, on one trained model, one machine.

    python bench/explore.py --weights resnet20.pt                 # CIFAR-10 (JPEG copy) ResNet-20, max drop 1 point
    python bench/explore.py --weights resnet20.pt --inc-python /tmp/inc-venv/bin/python

Both search on the same validation images (--val-size) and calibrate on the same 1,000 further training images; neither
reads the test split to choose. INC (neural-compressor 3.x, PyTorch static quantization through PT2E, its own tuning
space: activations symmetric or not, KL or min-max; `tolerable_loss` 0.01, relative) stops at its first passing
configuration. Then every pick is timed here, in one process, the same way: slimlab.measure.measure_latency at batch 1
(median of 30 after 10 warm-up, every model in turn three times over, the lowest median kept); INC's pick and the float model compiled as INC's documentation deploys them
(torch.compile, inductor freezing). Size is the deployable file: TorchScript, or torch.export's .pt2.

INC runs in its own virtual environment (it must not change the project's), given by --inc-python: a venv that sees
the project's packages (a .pth file calling site.addsitedir on the project venv's site-packages) with
`pip install --no-deps neural-compressor-pt prettytable py-cpuinfo psutil`. Without it the INC row says why.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from slimlab.executors import ExecOptions
from slimlab.explore import ExploreConfig, explore
from slimlab.explore.outputs import format_result
from slimlab.store import Store

INC_SCRIPT = Path(__file__).with_name("explore_inc.py")


def explore_config(args) -> ExploreConfig:
    return ExploreConfig(model=args.model, weights=args.weights, data=args.data, val_size=args.val_size, calibration_size=1000,
                         slice_size=args.slice_size, max_drop=args.max_drop, minimize="latency_b1", engines=args.engines,
                         unstructured_ladder=args.unstructured, channel_ladder=args.channels, float_layers=[1, 2, 4],
                         time_budget=args.time_budget)


def run_inc(args, cfg: ExploreConfig, out: Path) -> dict:
    """INC's autotune in its own interpreter; its pick saved as .pt2 in `out`, its figures as JSON."""
    if not args.inc_python:
        return {"error": "no --inc-python given: INC needs its own environment (see this file's docstring)"}
    started = time.monotonic()
    done = subprocess.run([args.inc_python, str(INC_SCRIPT), json.dumps(cfg.model_dump(mode="json")), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1]}
    figures = json.loads((out / "inc.json").read_text())
    return {**figures, "process_seconds": time.monotonic() - started}


ROUNDS = 3  # every model is timed in turn, ROUNDS times over; the least disturbed median is kept


def time_all(cfg: ExploreConfig, pick_file: Path, inc_file: Path | None) -> dict:
    """Batch-1 latency and file size of float (eager, compiled), explore's pick and INC's pick, in this process: each
    called once first (torch.compile compiles then), then timed round-robin ROUNDS times, keeping the lowest median."""
    from slimlab.measure import measure_latency, serialize_deployable
    from slimlab.models import create_model
    from slimlab.quantize.pt2e import Lowered, load_program

    model = create_model(cfg.model, 10, 3, 32, weights=cfg.weights).eval()
    blob, _ = serialize_deployable(model, torch.randn(1, 3, 32, 32))
    pick = load_program(pick_file) if pick_file.suffix == ".pt2" else torch.jit.load(str(pick_file)).eval()
    models = {"float eager": (model, len(blob)), "float compiled": (Lowered(model), len(blob)),
              "explore pick": (pick, pick_file.stat().st_size)}
    if inc_file is not None and inc_file.exists():
        models["INC pick"] = (load_program(inc_file), inc_file.stat().st_size)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for built, _ in models.values():
            built(x)
    medians: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(ROUNDS):
        for name, (built, _) in models.items():
            medians[name].append(measure_latency(built, x, warmup=10, repeats=30)["median_ms"])
    return {name: (min(medians[name]), size) for name, (_, size) in models.items()}


def _cpu() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((l.split(":", 1)[1].strip() for l in lines if l.startswith("Model name")), "unknown CPU")


def found_at(result) -> float | None:
    """Seconds into explore at which the stage that scored its pick finished: when the answer was in hand."""
    stage = next((st for st, scores in result.scores.items() for x in scores if result.pick and x.run_id == result.pick.run_id
                  and x.images == result.pick.images), None)
    return result.finished.get(stage)


def report(cfg, result, explore_s: float, inc: dict, rows: dict) -> None:
    eager_ms, float_bytes = rows["float eager"]
    compiled_ms = rows["float compiled"][0]
    print(f"CPU: {_cpu()}; torch threads {torch.get_num_threads()}; {cfg.model} on {cfg.data}, max drop {cfg.max_drop} points")
    print(f"{'':16} {'wall s':>8} {'found s':>8} {'trials':>6} {'val top-1 change':>17} {'b1 ms':>8} {'x eager':>8} {'x compiled':>10} {'MB':>7} {'size x':>7}")
    facts = {"explore pick": (explore_s, found_at(result), result.trials, result.pick.change if result.pick else float("nan")),
             "INC pick": (inc.get("process_seconds"), inc.get("seconds"), inc.get("trials"), inc.get("val_top1_change"))}
    for name, (ms, size) in rows.items():
        wall, found, trials, change = facts.get(name, (None, None, None, 0.0))
        print(f"{name:16} {wall or 0:8.0f} {found or 0:8.0f} {trials or 0:6} {change if change is not None else float('nan'):+17.2f} "
              f"{ms:8.3f} {eager_ms / ms:8.2f} {compiled_ms / ms:10.2f} {size / 1e6:7.3f} {float_bytes / size:7.2f}")
    print("wall s: the whole process for INC (imports, data, tuning, saving), the explore call for slimlab. found s: "
          "INC's tuning alone; explore's stage that scored its pick, finished. Explore's stages: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in result.finished.items()))
    if "error" in inc:
        print(f"INC: not run: {inc['error']}")
    else:
        print(f"INC: {inc['trials']} trials in {inc['seconds']:.0f} s of tuning; its pick: {inc['config']}")
    print(format_result(cfg, result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="cifar10_jpeg")
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--val-size", type=int, default=5000, help="validation images; a smaller number takes a subset of "
                        "the same held-out images (the same seeded permutation), never images the parent trained on")
    parser.add_argument("--slice-size", type=int, default=1000)
    parser.add_argument("--engines", nargs="+", default=["x86", "pt2e"])
    parser.add_argument("--unstructured", nargs="*", type=float, default=[0.5])
    parser.add_argument("--channels", nargs="*", type=float, default=[0.25, 0.5])
    parser.add_argument("--store", default="bench-explore/store")
    parser.add_argument("--out", default="bench-explore")
    parser.add_argument("-j", "--jobs", type=int, default=1)
    parser.add_argument("--time-budget", default=None, help="explore's --time-budget (e.g. 60s): stop starting stages after it")
    parser.add_argument("--inc-python", default=None, help="the interpreter of a venv with neural-compressor-pt")
    args = parser.parse_args()
    cfg, out = explore_config(args), Path(args.out)
    started = time.monotonic()
    result = explore(cfg, Store(args.store), out, "local", ExecOptions(jobs=args.jobs, progress=False))
    explore_s = time.monotonic() - started
    inc = run_inc(args, cfg, out)
    rows = time_all(cfg, result.deployable, out / "inc_pick.pt2" if "error" not in inc else None)
    report(cfg, result, explore_s, inc, rows)


if __name__ == "__main__":
    main()
