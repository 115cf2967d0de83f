"""CIFAR ResNets: the 3x3-stem ResNet18/34/50 (no max-pool) and He et al.'s ResNet-20/32/44/56/110."""
from __future__ import annotations

import torch
from torch import nn

from slimlab.models import register_model
from slimlab.models.blocks import BasicBlock, Bottleneck, conv_bn, init_resnet, make_stage


class CifarResNet(nn.Module):
    """3x3 stem conv-bn-relu, stages of residual blocks, global average pool, linear classifier."""

    def __init__(self, block, blocks: list[int], widths: list[int], num_classes: int, in_channels: int = 3,
                 zero_init_residual: bool = False):
        super().__init__()
        stem = widths[0] if block is BasicBlock and len(widths) == 3 else 64
        self.conv1, self.bn1 = conv_bn(in_channels, stem, 3)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage, cin = make_stage(block, cin, w, n, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_resnet(self, zero_init_residual)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet18(num_classes=10, in_channels=3, zero_init_residual=False):
    """ResNet18, CIFAR stem (3x3 conv, no max-pool); 11.17 M params at 10 classes."""
    return CifarResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, zero_init_residual)


@register_model
def resnet34(num_classes=10, in_channels=3, zero_init_residual=False):
    """ResNet34, CIFAR stem; 21.28 M params at 10 classes."""
    return CifarResNet(BasicBlock, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, zero_init_residual)


@register_model
def resnet50(num_classes=10, in_channels=3, zero_init_residual=False):
    """ResNet50 (bottleneck), CIFAR stem; 23.52 M params at 10 classes."""
    return CifarResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, zero_init_residual)


def _he_resnet(depth: int, num_classes: int, in_channels: int, zero_init_residual: bool) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet(BasicBlock, [n, n, n], [16, 32, 64], num_classes, in_channels, zero_init_residual)


@register_model
def resnet20(num_classes=10, in_channels=3, zero_init_residual=False):
    """He et al. CIFAR ResNet-20 (1x1 projection shortcuts); 0.27 M params."""
    return _he_resnet(20, num_classes, in_channels, zero_init_residual)


@register_model
def resnet32(num_classes=10, in_channels=3, zero_init_residual=False):
    """He et al. CIFAR ResNet-32; 0.47 M params."""
    return _he_resnet(32, num_classes, in_channels, zero_init_residual)


@register_model
def resnet44(num_classes=10, in_channels=3, zero_init_residual=False):
    """He et al. CIFAR ResNet-44; 0.66 M params."""
    return _he_resnet(44, num_classes, in_channels, zero_init_residual)


@register_model
def resnet56(num_classes=10, in_channels=3, zero_init_residual=False):
    """He et al. CIFAR ResNet-56; 0.86 M params."""
    return _he_resnet(56, num_classes, in_channels, zero_init_residual)


@register_model
def resnet110(num_classes=10, in_channels=3, zero_init_residual=False):
    """He et al. CIFAR ResNet-110; 1.73 M params."""
    return _he_resnet(110, num_classes, in_channels, zero_init_residual)
