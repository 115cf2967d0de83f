"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman 2015; CIFAR variant with one linear classifier)."""
from __future__ import annotations

import torch
from torch import nn

from slimlab.models import register_model

_LAYOUTS = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
            16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]}


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
        layers, cin = [], in_channels
        for v in _LAYOUTS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model
def vgg11_bn(num_classes=10, in_channels=3):
    """VGG-11 with batch norm, CIFAR variant; 9.23 M params at 10 classes."""
    return VGG(11, num_classes, in_channels)


@register_model
def vgg16_bn(num_classes=10, in_channels=3):
    """VGG-16 with batch norm, CIFAR variant; 14.72 M params at 10 classes."""
    return VGG(16, num_classes, in_channels)
