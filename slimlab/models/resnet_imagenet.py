"""ImageNet-style ResNets (7x7 stem + max-pool) with torchvision's layer names, so its checkpoints load."""
from __future__ import annotations

import torch
from torch import nn

from slimlab.models import register_model
from slimlab.models.blocks import BasicBlock, Bottleneck, init_resnet, make_stage


class ImageNetResNet(nn.Module):
    def __init__(self, block, blocks: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        self.layer1, cin = make_stage(block, cin, 64, blocks[0], 1)
        self.layer2, cin = make_stage(block, cin, 128, blocks[1], 2)
        self.layer3, cin = make_stage(block, cin, 256, blocks[2], 2)
        self.layer4, cin = make_stage(block, cin, 512, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_resnet(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet18_imagenet(num_classes=10, in_channels=3):
    """ResNet18 with the ImageNet stem (7x7 conv + max-pool), torchvision layout; 11.18 M params at 10 classes."""
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@register_model
def resnet50_imagenet(num_classes=10, in_channels=3):
    """ResNet50 with the ImageNet stem, torchvision layout; 23.53 M params at 10 classes."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)
