"""Lottery-ticket operations: snapshots, weight rewinding (to init or epoch k), retraining recipes, and the two controls."""
from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

from slimlab.config import TrainConfig
from slimlab.data.loader import DeviceLoader
from slimlab.errors import ConfigError
from slimlab.prune.unstructured import Masks, apply_masks_
from slimlab.train import fine_tuning_overrides, peak_rates, train

State = dict[str, torch.Tensor]
AfterRound = Literal["finetune", "lr_rewind", "weight_rewind", "none"]


def snapshot(model: nn.Module) -> State:
    """A detached copy of every parameter and buffer (batch-norm statistics included), as rewinding needs."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def rewind_(model: nn.Module, state: State, masks: Masks) -> None:
    """Load `state` (weights, biases, norms, buffers) and zero the pruned weights: surviving weights equal `state` exactly."""
    model.load_state_dict(state)
    apply_masks_(model, masks)


def initial_state(build: Callable[[], nn.Module], seed: int) -> State:
    """The weights `build()` produces after torch.manual_seed(seed), without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return snapshot(build())


def reinitialized_state(model: nn.Module, seed: int) -> State:
    """Fresh weights from each module's own reset_parameters(), for user models without a registered factory."""
    import copy

    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    return snapshot(fresh)


def random_masks_like(masks: Masks, seed: int) -> Masks:
    """The random-pruning control: in every layer, as many kept weights as in `masks`, at uniformly random places."""
    generator = torch.Generator().manual_seed(seed)
    result: Masks = {}
    for name, mask in masks.items():
        keep = int(mask.sum())
        order = torch.randperm(mask.numel(), generator=generator)
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[order[:keep]] = True
        result[name] = flat.view(mask.shape).to(mask.device)
    return result


def retrain_config(train_cfg: TrainConfig, after_round: AfterRound, finetune_epochs: int, finetune_lr: float) -> TrainConfig:
    """Training after a pruning round: the original schedule for both rewindings (Renda et al. 2020), a small constant lr to fine-tune.
    No extra that keeps its own copy of the weights (an average, Lookahead's slow weights): it would bring back
    weights that a mask removed during the round; each extra says so itself (`fine_tuning_overrides`). A fine-tune
    is the end of training, so it ends on uncropped images as the parent did."""
    if after_round == "finetune":
        return train_cfg.model_copy(update={"epochs": finetune_epochs, **peak_rates(train_cfg, finetune_lr), "schedule": "constant", "warmup_epochs": 0.0,
                                            **fine_tuning_overrides(train_cfg),
                                            "uncropped_final_epochs": min(train_cfg.uncropped_final_epochs, finetune_epochs)})
    if after_round in ("lr_rewind", "weight_rewind"):
        return train_cfg.model_copy(update=fine_tuning_overrides(train_cfg))
    raise ConfigError(f"after_round {after_round!r} does not retrain; choose finetune, lr_rewind or weight_rewind")


class _ReachedEpoch(Exception):
    """Raised by SnapshotAtEpoch(stop=True) to end a replay early; never escapes train_until_epoch."""


class SnapshotAtEpoch:
    """Training callback keeping the weights at the end of epoch `epoch` (1-based): the late-rewinding point."""

    def __init__(self, epoch: int, stop: bool = False):
        self.epoch, self.stop = epoch, stop
        self.state: State | None = None

    def on_epoch_end(self, epoch: int, model: nn.Module, record: dict) -> None:
        if epoch + 1 == self.epoch:
            self.state = snapshot(model)
            if self.stop:
                raise _ReachedEpoch


def train_until_epoch(model: nn.Module, loader: DeviceLoader, cfg: TrainConfig, epoch: int, progress: bool = False) -> State:
    """Replay the first `epoch` epochs of `cfg` (same schedule, same seeded batches) and return the weights then."""
    if not 0 < epoch <= cfg.epochs:
        raise ConfigError(f"rewind_epoch must be between 1 and train.epochs ({cfg.epochs}), got {epoch}")
    catcher = SnapshotAtEpoch(epoch, stop=True)
    try:
        train(model, loader, cfg, callbacks=[catcher], progress=progress, desc="replay to rewind point")
    except _ReachedEpoch:
        pass
    return catcher.state
