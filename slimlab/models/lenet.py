"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling."""
from __future__ import annotations

import torch
from torch import nn

from slimlab.models import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        # 28x28 inputs get padding 2 so both MNIST and 32x32 images reach the classic 16x5x5 features.
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2 if image_size == 28 else 0)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((image_size + (4 if image_size == 28 else 0) - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))


@register_model
def lenet5(num_classes=10, in_channels=1, image_size=28):
    """LeNet-5; 61,706 params on 28x28 gray images with 10 classes."""
    return LeNet5(num_classes, in_channels, image_size)
