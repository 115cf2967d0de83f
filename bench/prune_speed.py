"""Does pruning make CIFAR ResNet18 faster and smaller on this CPU? Structured 50% of channels vs dense vs 90% unstructured.

    python bench/prune_speed.py [--threads 2] [--repeats 30] [--amount 0.5]

Random weights in eval mode (latency does not depend on training). Structured pruning removes the lowest-L1 half of
every channel group, stage widths tied across residual adds included; unstructured pruning zeroes 90% of the weights
by global magnitude and keeps the dense layers, so its latency should not move and only its sparse file shrinks.
"""
import argparse
import copy
import io
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import slimlab  # noqa: E402
from slimlab.measure import count_macs, count_parameters, cpu_model, measure_latency, serialize_deployable  # noqa: E402
from slimlab.prune import prune_l1_unstructured_, prune_ln_structured_, storage_report  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=30)
parser.add_argument("--warmup", type=int, default=10)
parser.add_argument("--amount", type=float, default=0.5, help="fraction of channels removed (structured)")
parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of weights zeroed (unstructured)")
args = parser.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

dense = slimlab.create_model("resnet18").eval()
one = torch.randn(1, 3, 32, 32)
structured = copy.deepcopy(dense)
started = time.perf_counter()
groups = prune_ln_structured_(structured, args.amount, one)
structured_seconds = time.perf_counter() - started
sparse = copy.deepcopy(dense)
started = time.perf_counter()
prune_l1_unstructured_(sparse, args.sparsity, scope="global")
sparse_seconds = time.perf_counter() - started
models = {"dense": dense, f"structured {args.amount:.0%} channels": structured, f"unstructured {args.sparsity:.0%} weights": sparse}

print(f"CIFAR ResNet18, random weights, eval; {cpu_model()}; torch {torch.__version__}; {args.threads} threads; "
      f"median of {args.repeats} runs after {args.warmup} warm-up")
print(f"structured: {len(groups)} channel groups ({sum(g.residual for g in groups)} tied across residual adds) "
      f"pruned in {structured_seconds:.2f}s; unstructured global L1 in {sparse_seconds:.2f}s\n")
rows = {}
for name, model in models.items():
    counts = count_parameters(model)
    row = {"params": counts["params"], "nonzero": counts["nonzero_params"], "macs": count_macs(copy.deepcopy(model), one)["macs"],
           "torchscript_bytes": len(serialize_deployable(model, one)[0])}
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32)
        row[f"b{batch}_ms"] = measure_latency(model, x, args.warmup, args.repeats, args.threads)["median_ms"]
    rows[name] = row

header = f"{'model':<28}{'params':>12}{'non-zero':>12}{'MACs':>14}{'b1 ms':>10}{'b64 ms':>10}{'b1 x':>8}{'b64 x':>8}"
print(header)
print("-" * len(header))
base = rows["dense"]
for name, r in rows.items():
    print(f"{name:<28}{r['params']:>12,}{r['nonzero']:>12,}{r['macs']:>14,}{r['b1_ms']:>10.2f}{r['b64_ms']:>10.1f}"
          f"{base['b1_ms'] / r['b1_ms']:>7.2f}x{base['b64_ms'] / r['b64_ms']:>7.2f}x")

structured_name, sparse_name = list(rows)[1], list(rows)[2]
speedup64 = base["b64_ms"] / rows[structured_name]["b64_ms"]
sizes = storage_report(sparse)
buffer = io.BytesIO()
torch.save(structured.state_dict(), buffer)
print(f"\nstructured: {speedup64:.2f}x faster at batch 64 (target >= 1.8x: {'met' if speedup64 >= 1.8 else 'NOT met'}), "
      f"{base['macs'] / rows[structured_name]['macs']:.2f}x fewer MACs, state dict {len(buffer.getvalue()):,} bytes")
print(f"unstructured {args.sparsity:.0%}: dense state dict {sizes['dense_bytes']:,} bytes, sparse file {sizes['sparse_bytes']:,} bytes "
      f"= {sizes['sparse_to_dense']:.3f}x (target <= 0.25x: {'met' if sizes['sparse_to_dense'] <= 0.25 else 'NOT met'})")
print(f"unstructured {args.sparsity:.0%}: latency vs dense {base['b1_ms'] / rows[sparse_name]['b1_ms']:.2f}x at batch 1, "
      f"{base['b64_ms'] / rows[sparse_name]['b64_ms']:.2f}x at batch 64 -- expected about 1.0x: dense kernels multiply the zeros too")
print(json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows, "sparse_storage": sizes}))
