"""Building blocks written for eager quantization: separate ReLU modules and residual adds through FloatFunctional."""
from __future__ import annotations

from torch import nn
from torch.ao.nn.quantized import FloatFunctional


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None) -> list[nn.Module]:
    pad = kernel // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn, identity or 1x1 projection shortcut; attribute names follow torchvision."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3)
        self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride, 0)) if stride != 1 or cin != cout else None
        self.add = FloatFunctional()  # becomes a quantized add after conversion
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add.add(out, identity))


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck with stride on the 3x3 (torchvision's 'ResNet v1.5')."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv_bn(cin, width, 1, 1, 0)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3, self.bn3 = conv_bn(width, cout, 1, 1, 0)
        self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride, 0)) if stride != 1 or cin != cout else None
        self.add = FloatFunctional()
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(self.add.add(out, identity))


def make_stage(block, cin: int, width: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    layers = []
    for i in range(blocks):
        layers.append(block(cin, width, stride if i == 0 else 1))
        cin = width * block.expansion
    return nn.Sequential(*layers), cin


def init_resnet(model: nn.Module, zero_init_residual: bool = False) -> None:
    """Kaiming-normal convolutions, unit batch norms (He et al. 2015); optionally each block's last batch norm at zero.

    Zero-initialized residual branches start every block as the identity (Goyal et al. 2017); the 20-epoch
    ResNet-20 recipe uses it with a higher learning rate.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules() if zero_init_residual else ():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
