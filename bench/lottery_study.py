"""The lottery-ticket study at CPU scale: ResNet-20 on CIFAR-10 (JPEG copy), 80% global sparsity in 3 rounds with
late weight rewinding, against the random re-initialization control; prints the accuracy-vs-sparsity table.

    python bench/lottery_study.py [--store DIR] [--set train.device=cuda ...]

The dense parent is trained once and shared by both runs (same training config); a study cut off part-way resumes
from the store when started again.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import slimlab  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--store", default="bench/out/store")
parser.add_argument("--set", dest="overrides", action="append", default=[])
args = parser.parse_args()

rows = {}
for control in ("none", "reinit"):
    config = slimlab.load_config(ROOT / "examples/prune_lottery_cpu.yaml", [*args.overrides, f"steps.0.control={control}"])
    record = slimlab.run(config, store=args.store)
    if record.status != "done":
        sys.exit(f"run {record.id} ({control}) {record.status}: {record.error}")
    rows[control] = record

ticket, control = rows["none"].metrics, rows["reinit"].metrics
env = rows["none"].env
print(f"ResNet-20, CIFAR-10 (JPEG copy), {rows['none'].config['train']['epochs']} epochs per round, device {env.get('gpu') or env.get('cpu')}")
print(f"{'model':44} {'weights left':>12} {'top-1 %':>8}")
print(f"{'dense (same schedule)':44} {'100.0%':>12} {ticket['float_top1']:8.2f}")
r = 1
while f"round{r}_top1" in ticket:
    print(f"{f'ticket, round {r} (rewind to epoch 1)':44} {100 * (1 - ticket[f'round{r}_sparsity']):11.1f}% {ticket[f'round{r}_top1']:8.2f}")
    r += 1
print(f"{'control: same mask, random re-initialization':44} {100 * (1 - control['prune_sparsity']):11.1f}% {control['top1']:8.2f}")
print(f"ticket - dense: {ticket['top1'] - ticket['float_top1']:+.2f} points (goal: >= -1.5); "
      f"ticket - control: {ticket['top1'] - control['top1']:+.2f} points (goal: > 0)")
# The study trained the parent and the ticket's rounds once, plus the control's own last round: the control's
# metrics also count the parent and the rounds it reused, which this study did not pay for twice.
control_history = slimlab.Store(args.store).history(rows["reinit"].id)
control_own = sum(rec.get("seconds", 0.0) for rec in control_history if "prune_round" in rec and not rec.get("reused"))
print(f"runs: ticket {rows['none'].id}, control {rows['reinit'].id}; "
      f"study training time {ticket['total_train_seconds'] + control_own:.0f} s")
