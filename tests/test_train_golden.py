"""The recipe's numbers do not move: a tiny run with every recipe option ends on weights and a history pinned to the
last bit, golden values computed before the extras moved out of the loop (issue 19)."""
import hashlib
import json

import pytest
import torch

from slimlab.config import TrainConfig
from slimlab.data import ImageSplit
from slimlab.data.loader import DeviceLoader
from slimlab.models import create_model
from slimlab.train import train

# Like examples/resnet20_cifar10.yaml, shrunk: Muon, Lookahead (3 does not divide the 8 steps: a final sync), a
# weight average, label smoothing, one-cycle with warm-up and an uncropped last epoch; and plain SGD on a step schedule.
RECIPES = {
    "recipe": dict(optimizer="muon", lr=0.4, muon_lr=0.03, lookahead_steps=3, ema_decay=0.9, label_smoothing=0.1,
                   schedule="onecycle", warmup_epochs=1, uncropped_final_epochs=1),
    "sgd": dict(optimizer="sgd", lr=0.05, schedule="step", milestones=[0.5], warmup_epochs=0.5, label_smoothing=0.0),
}
# Computed on the loop before issue 19 (commit c50e62e), one thread (tests/conftest.py).
GOLDEN = {
    "recipe": "11207d5fca653fe9",
    "sgd": "d3f1f54110614f6a",
}


def _loader(seed: int, n: int, train: bool) -> DeviceLoader:
    generator = torch.Generator().manual_seed(seed)
    split = ImageSplit(torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8, generator=generator), torch.arange(n) % 10)
    return DeviceLoader(split, 16, (0.5,) * 3, (0.25,) * 3, shuffle=train, augment=train, alternate_flips=True,
                        drop_last=train, padding_mode="reflect")


def _fingerprint(model: torch.nn.Module, history: list[dict]) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    numbers = [{k: v for k, v in record.items() if k != "seconds"} for record in history]  # wall time is not a result
    digest.update(json.dumps(numbers, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_the_recipe_ends_on_the_same_weights_and_history_to_the_bit(recipe):
    cfg = TrainConfig(epochs=2, batch_size=16, **RECIPES[recipe])
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, image_size=16, zero_init_residual=True)
    history = train(model, _loader(0, 64, True), cfg, val_loader=_loader(1, 32, False), progress=False)
    assert len(history) == 2 and all("val_top1" in record for record in history)
    assert ("final_val_top1" in history[-1]) == (recipe == "recipe")  # validated again on the averaged weights
    assert _fingerprint(model, history) == GOLDEN[recipe], history
