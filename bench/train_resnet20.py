"""Train ResNet-20 on CIFAR-10 (JPEG copy) on this CPU with the recipe in examples/resnet20_cifar10.yaml; print accuracy and time.

    python bench/train_resnet20.py [--store DIR] [--set train.epochs=...]

A killed run resumes from its last epoch when started again with the same settings.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import slimlab  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--store", default="bench/out/store")
parser.add_argument("--set", dest="overrides", action="append", default=[])
args = parser.parse_args()

config = slimlab.load_config(Path(__file__).resolve().parents[1] / "examples/resnet20_cifar10.yaml", args.overrides)
started = time.time()
record = slimlab.run(config, store=args.store)
m = record.metrics
print(json.dumps({"id": record.id, "status": record.status, "error": record.error, "dataset": "CIFAR-10 (JPEG copy)",
                  "model": config.model.name, "epochs": m.get("train_epochs"), "top1": m.get("top1"), "top5": m.get("top5"),
                  "top1_flip_tta": m.get("top1_flip_tta"),
                  "train_seconds": m.get("train_seconds"), "train_minutes": round(m.get("train_seconds", 0) / 60, 1),
                  "threads": record.env.get("torch_threads"), "cpu": record.env.get("cpu"),
                  "weights": record.notes.get("trained_weights")}, indent=1))
