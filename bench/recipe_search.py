"""Recipe search: train ResNet-20 with variants of examples/resnet20_cifar10.yaml over several seeds, in parallel
processes (meant for a GPU), and print each variant's test top-1 per seed and its mean.

    python bench/recipe_search.py [--seeds 3] [--parallel 6] [--only 0,1] [--set train.device=cuda ...]

Each job trains and evaluates in its own process and prints one JSON line; no store, no latency timing. The
variants are changes to the recipe file, which is itself variant 0. On an H200, six fp32 jobs at once took 171 s
each, fourteen at once 367 s each, and fifteen at once 468 s each; self-distillation jobs, with their extra forward
pass, had not finished after 560 s among fifteen, nor after 185 s among four.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples/resnet20_cifar10.yaml"
# Variant 0 is the recipe file (Muon); the others vary its Muon settings, or go back to SGD for the convolutions.
# Earlier lists (training-time branches, self-distillation) are in the git history; their results are in docs/results.md.
VARIANTS = [
    {},
    {"train.optimizer": "sgd"},
    {"train.muon_lr": 0.015},
    {"train.muon_lr": 0.06},
    {"train.muon_momentum": 0.95},
    {"train.muon_momentum": 0.8},
]


def run_job(variant: int, seed: int, overrides: list[str]) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    import slimlab
    from slimlab.run import prepare_data
    from slimlab.train import evaluate, train

    settings = [*overrides, f"seed={seed}", *(f"{k}={v}" for k, v in VARIANTS[variant].items())]
    config = slimlab.load_config(RECIPE, settings)
    data = prepare_data(config, progress=False)
    torch.manual_seed(seed)
    model = slimlab.create_model(config.model.name, data.dataset.num_classes, **config.model.options).to(data.device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    started = time.time()
    history = train(model, data.loader(data.train, config.train.batch_size, config, training=True), config.train, progress=False)
    test = data.loader(data.test, config.measure.eval_batch_size, config)
    return {"variant": variant, "seed": seed, "changes": VARIANTS[variant], "top1": evaluate(model, test)["top1"],
            "top1_flip_tta": evaluate(model, test, flip_tta=True)["top1"], "train_top1": history[-1]["train_top1"],
            "seconds": round(time.time() - started, 1), "device": str(data.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=1, help="jobs at once")
    parser.add_argument("--only", default=None, help="comma-separated variant numbers (default: all)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every variant")
    parser.add_argument("--job", nargs=2, type=int, help=argparse.SUPPRESS)  # internal: run one (variant, seed)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(*args.job, args.overrides)), flush=True)
        return

    import slimlab
    from slimlab.run import prepare_data

    prepare_data(slimlab.load_config(RECIPE, args.overrides))  # decode the dataset once, before the jobs share its cache
    variants = [int(v) for v in args.only.split(",")] if args.only else range(len(VARIANTS))
    queue = [(v, s) for s in range(args.seeds) for v in variants]  # seed-major: a cut-off search stays balanced
    running, results = [], []
    while queue or running:
        while queue and len(running) < args.parallel:
            v, s = queue.pop(0)
            command = [sys.executable, __file__, "--job", str(v), str(s), *(f"--set={o}" for o in args.overrides)]
            running.append((subprocess.Popen(command, stdout=subprocess.PIPE, text=True), v, s))
        time.sleep(1)
        for entry in [e for e in running if e[0].poll() is not None]:
            running.remove(entry)
            job, v, s = entry
            lines = job.stdout.read().strip().splitlines()
            if job.returncode == 0 and lines:
                results.append(json.loads(lines[-1]))
                print(lines[-1], flush=True)
            else:
                print(json.dumps({"variant": v, "seed": s, "failed_with_returncode": job.returncode}), flush=True)
    print("\nvariant  seeds  mean top-1  mean flip-TTA  changes to the recipe")
    for v in variants:
        rows = [r for r in results if r["variant"] == v]
        if rows:
            print(f"{v:7d}  {len(rows):5d}  {statistics.mean(r['top1'] for r in rows):10.2f}  "
                  f"{statistics.mean(r['top1_flip_tta'] for r in rows):13.2f}  {VARIANTS[v] or 'none'}")


if __name__ == "__main__":
    main()
