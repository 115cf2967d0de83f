"""What the training loop itself costs per step, for two checkouts side by side: a bound on how much a change to the
loop can move training throughput.

    python bench/loop_overhead.py --repos /path/to/old/checkout .      # e.g. a `git worktree add` of an older commit

Throughput rounds on a shared 2-core machine vary by 5 to 20% (bench/train_throughput.py), far more than the 2% a
loop change must stay within. So this times the loop where it is all there is: a model of one linear layer on 4x4
images, batch 8, the recipe's extras on (Lookahead, weight average, label smoothing, one-cycle), where a step's
compute is a few microseconds and everything else is the loop's own Python. Each checkout runs in its own process,
alternating (A B A B ...), and the script prints the median microseconds per step of each. The difference, set
against a real step's time (ResNet-20 at batch 128: about 290 ms on 2 threads here), bounds the throughput change.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
import torch
from torch import nn
from slimlab.config import ExperimentConfig
from slimlab.run import prepare_data
from slimlab.train import train
torch.set_num_threads(1)
config = ExperimentConfig.model_validate({
    "data": {"name": "synthetic", "val_size": 0, "flip": False, "crop_padding": 0,
             "options": {"train_size": 4096, "test_size": 8, "size": 4, "channels": 1}},
    "model": {"name": "lenet5"},
    "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "warmup_epochs": 0.5, "lookahead_steps": 5, "ema_decay": 0.99,
              "channels_last": False, "device": "cpu"}})
data = prepare_data(config, progress=False, device="cpu")
loader = data.loader(data.train, config.train.batch_size, config, training=True)
model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
train(model, loader, config.train.model_copy(update={"epochs": 1}), progress=False)  # warm-up
started = time.perf_counter()
train(model, loader, config.train, progress=False)
steps = config.train.epochs * len(loader)
print(json.dumps({"us_per_step": (time.perf_counter() - started) / steps * 1e6, "steps": steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", nargs="+", default=["."], help="checkouts of slimlab to compare")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    repos = [str(Path(r).resolve()) for r in args.repos]
    times = {r: [] for r in repos}
    for round_index in range(args.rounds):
        for repo in repos:
            out = subprocess.run([sys.executable, "-c", CHILD, repo], capture_output=True, text=True, check=True).stdout
            times[repo].append(json.loads(out.strip().splitlines()[-1])["us_per_step"])
        print(f"round {round_index + 1}: " + ", ".join(f"{Path(r).name} {times[r][-1]:.1f} us/step" for r in repos), flush=True)
    for repo in repos:
        print(f"{repo}: median {statistics.median(times[repo]):.1f} us/step, best {min(times[repo]):.1f}")


if __name__ == "__main__":
    main()
