"""Cost of training-time branches: median ms per ResNet-20 training step (batch 128, fp32) with each kind of
`train.branches`, side by side in one run, and the ratio to no branches. The folded models have the plain model's
parameter count, which the script checks. The kinds run one after another (not alternated), so the ratios move
with the machine's load between them: 1.4x to 2.4x over repeated runs here.

    python bench/branch_cost.py
"""
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slimlab.branches import add_branches, fold_branches  # noqa: E402
from slimlab.models import create_model  # noqa: E402

torch.manual_seed(0)
images = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (128,))
baseline = None
for kind in ["none", "pointwise", "asymmetric", "both"]:
    model = create_model("resnet20", zero_init_residual=True)
    if kind != "none":
        add_branches(model, kind)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    times = []
    for _ in range(13):  # 3 warm-up steps, 10 timed
        started = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    median = sorted(times[3:])[5]
    baseline = baseline or median
    if kind != "none":
        fold_branches(model, [images[:64]])
    params = sum(p.numel() for p in model.parameters())
    assert params == 272_474, f"{kind}: {params:,} parameters after folding, not ResNet-20's 272,474"
    print(f"{kind:11s} {median * 1000:7.1f} ms/step  {median / baseline:4.2f}x  params after folding {params:,}")
