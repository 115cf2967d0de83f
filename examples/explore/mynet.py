"""A user's own CNN, as someone brings it to `slimlab explore --model examples.explore.mynet:build`: depthwise-separable
blocks (MobileNet-style, with a residual where shapes allow) and a two-branch block whose outputs are concatenated
(Inception-style). About 0.1 M parameters for 32x32 images."""
from __future__ import annotations

from torch import Tensor, cat, nn


def separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 depthwise, then 1x1 pointwise, each with batch norm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Branches(nn.Module):
    """A 1x1 branch and a separable 3x3 branch side by side, concatenated on channels."""

    def __init__(self, cin: int, each: int):
        super().__init__()
        self.point = nn.Sequential(nn.Conv2d(cin, each, 1, bias=False), nn.BatchNorm2d(each), nn.ReLU())
        self.spatial = separable(cin, each)

    def forward(self, x: Tensor) -> Tensor:
        return cat([self.point(x), self.spatial(x)], dim=1)


def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        separable(32, 64, 2), Residual(separable(64, 64)),
        Branches(64, 64), separable(128, 128, 2), Residual(separable(128, 128)),
        Branches(128, 96), separable(192, 256, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes))
