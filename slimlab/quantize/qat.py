"""Quantization-aware training: fake-quantized fine-tuning (through the one training loop), then real int8 kernels."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from slimlab.quantize.configs import QATConfig
from slimlab.quantize.pt2e import PT2EQATModel, convert_qat_pt2e, prepare_qat_pt2e
from slimlab.quantize.qconfigs import qat_qconfig
from slimlab.quantize.torch_engine import convert_torch_, prepare_torch_


def prepare_qat(model: nn.Module, config: QATConfig, example: torch.Tensor) -> nn.Module:
    """A copy to train: conv-bn(-relu) fused keeping BN trainable, fake quantizers inserted; `model` is left as it was."""
    if config.engine == "pt2e":
        return prepare_qat_pt2e(model, config.skip, example)
    return prepare_torch_(copy.deepcopy(model), qat_qconfig(config.engine, config.per_channel), config.skip, example,
                          config.engine, config.mode, qat=True)


def convert_qat(model: nn.Module) -> nn.Module:
    """Fake-quantized model -> a new int8 model on the CPU, BN folded with its final statistics."""
    if isinstance(model, PT2EQATModel):
        return convert_qat_pt2e(model)
    return convert_torch_(copy.deepcopy(model))


prepare_qat_, convert_qat_ = prepare_qat, convert_qat  # the old names, kept for existing scripts


def _fake_quant_switches(model: nn.Module):
    """(disable_fake_quant, enable_fake_quant, disable_observer) of the library whose fake quantizers `model` holds."""
    if isinstance(model, PT2EQATModel):
        from torchao.quantization.pt2e import disable_fake_quant, disable_observer, enable_fake_quant
    else:
        from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant
    return disable_fake_quant, enable_fake_quant, disable_observer


@torch.no_grad()
def calibrate_observers_(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Set the observers' ranges from calibration data before training, so the first steps see sensible scales."""
    disable_fake_quant, enable_fake_quant, _ = _fake_quant_switches(model)
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
        from torch.ao.nn.intrinsic.qat import freeze_bn_stats

        if epoch >= self.freeze_bn_epoch:
            model.freeze_bn_stats() if isinstance(model, PT2EQATModel) else model.apply(freeze_bn_stats)
        if epoch >= self.freeze_observer_epoch:
            model.apply(_fake_quant_switches(model)[2])
