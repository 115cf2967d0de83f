"""Checks slimlab's CUDA path on a GPU: the one training loop with bf16 autocast, CUDA-event latency, NVML energy.

    python bench/gpu_check.py [--epochs 3] [--store DIR] [--set KEY=VALUE ...]

It trains examples/resnet20_cifar10.yaml (Muon for the convolutions) for a few epochs; `--set train.optimizer=sgd`
checks the SGD path instead.

Prints the run's metrics and the notes saying how each was measured; exits 0 with a message where there is no GPU.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import slimlab  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--store", default="bench/out/gpu-store")
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as for `slimlab run`, applied after this script's own")
args = parser.parse_args()
if not torch.cuda.is_available():
    print("no CUDA device: nothing to check here (the CPU path is covered by the test suite)")
    sys.exit(0)

config = slimlab.load_config(ROOT / "examples/resnet20_cifar10.yaml", [
    f"train.epochs={args.epochs}", "train.warmup_epochs=1", f"train.uncropped_final_epochs={min(1, args.epochs)}", "train.device=cuda", "train.amp=true", "measure.batch_sizes=[1,256]", *args.overrides])
record = slimlab.run(config, store=args.store)
m = record.metrics
checks = {
    "status done": record.status == "done",
    "trained on cuda": record.env.get("device", "").startswith("cuda"),
    "CUDA-event timing": "cuda_event" in record.notes.get("latency", ""),
    "NVML energy measured": "train_energy_j" in m and m["train_energy_j"] > 0,
    "learned something": m.get("top1", 0) > 50,
}
print(json.dumps({"gpu": record.env.get("gpu"), "metrics": m, "notes": record.notes,
                  "seconds_per_epoch": m["train_seconds"] / max(1, m["train_epochs"]),
                  "images_per_second": 50000 * m["train_epochs"] / m["train_seconds"]}, indent=1, sort_keys=True))
for name, ok in checks.items():
    print(f"{'ok  ' if ok else 'FAIL'} {name}")
sys.exit(0 if all(checks.values()) else 1)
