"""Quantization-aware training: fake-quantized fine-tuning (through the one training loop), then real int8 kernels."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.ao.nn.intrinsic.qat import freeze_bn_stats
from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant

from slimlab.quantize.configs import QATConfig
from slimlab.quantize.qconfigs import qat_qconfig
from slimlab.quantize.torch_engine import convert_torch_, prepare_torch_


def prepare_qat_(model: nn.Module, config: QATConfig, example: torch.Tensor) -> nn.Module:
    """Fuse conv-bn(-relu) keeping BN trainable, insert fake quantizers; returns the model to train (eager: same object)."""
    return prepare_torch_(model, qat_qconfig(config.engine, config.per_channel), config.skip, example, config.engine,
                          config.mode, qat=True)


def convert_qat_(model: nn.Module) -> nn.Module:
    """Fake-quantized model -> int8 kernels on the CPU, BN folded with its final statistics."""
    return convert_torch_(model)


@torch.no_grad()
def calibrate_observers_(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Set the observers' ranges from calibration data before training, so the first steps see sensible scales."""
    was_training = model.training
    model.eval()  # BN uses its running statistics; observers still record
    model.apply(disable_fake_quant)
    for x in batches:
        model(x)
    model.apply(enable_fake_quant)
    model.train(was_training)


class QATSchedule:
    """Training-loop callback: from `freeze_bn_epoch` BN statistics stop updating, from `freeze_observer_epoch` scales do."""

    def __init__(self, freeze_bn_epoch: int, freeze_observer_epoch: int):
        self.freeze_bn_epoch, self.freeze_observer_epoch = freeze_bn_epoch, freeze_observer_epoch

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        # Frozen BN statistics and scales let the last epochs fit the weights to the numbers inference will use.
        if epoch >= self.freeze_bn_epoch:
            model.apply(freeze_bn_stats)
        if epoch >= self.freeze_observer_epoch:
            model.apply(disable_observer)
