"""Cost of the optimizer: median ms per ResNet-20 training step (batch 128, fp32, forward + backward + step) with
`train.optimizer: sgd` and `muon`, side by side in one run, alternating so drift hits both alike, and the ratio.

    python bench/optimizer_cost.py
"""
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slimlab.config import TrainConfig  # noqa: E402
from slimlab.models import create_model  # noqa: E402
from slimlab.optimizers import make_optimizer  # noqa: E402

torch.manual_seed(0)
images = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
labels = torch.randint(0, 10, (128,))
setups = {}
for name in ["sgd", "muon"]:
    model = create_model("resnet20", zero_init_residual=True).to(memory_format=torch.channels_last)
    setups[name] = (model, make_optimizer(model, TrainConfig(optimizer=name), images[:32]))
times = {name: [] for name in setups}
for round_ in range(23):  # 3 warm-up rounds, 20 timed; each round times one step of each optimizer
    for name, (model, optimizer) in setups.items():
        started = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if round_ >= 3:
            times[name].append(time.perf_counter() - started)
medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
for name, median in medians.items():
    print(f"{name:5s} {median * 1000:7.1f} ms/step  {median / medians['sgd']:4.2f}x  ({torch.get_num_threads()} threads)")
