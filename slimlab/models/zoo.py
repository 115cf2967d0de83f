"""The real-architecture suite: torchvision's own model classes, the families people bring, sized for a CPU test run.

Why torchvision (docs/coverage.md): it has every family the suite must cover (plain, bottleneck, grouped and wide
ResNets, MobileNetV2/V3, EfficientNet, ShuffleNetV2, DenseNet, SqueezeNet, GoogLeNet, RegNet, ConvNeXt, VGG, AlexNet,
MNASNet, ViT, Swin), written by people who are not us, in the form users copy; Hugging Face `transformers` lacks
ShuffleNet, DenseNet, SqueezeNet, GoogLeNet and VGG, and timm imports torchvision anyway. Its wheel on the package
index is built against CUDA torch: beside the CPU wheel only its compiled detection operators fail, so
`import_torchvision` declares the two operator schemas its import registers fake kernels for, and the pure-Python
model code runs unchanged. `size="test"` builds each class with fewer blocks or narrower layers (same block code);
`size="full"` builds torchvision's published configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from slimlab.errors import SlimlabError

Size = Literal["test", "full"]


@dataclass(frozen=True)
class Architecture:
    """One suite entry: its family, what it exercises, and a builder `(num_classes, size) -> nn.Module`."""

    name: str
    family: str
    exercises: str
    build: Callable[[int, Size], nn.Module]
    # The test size's input. AlexNet's strides need 64 pixels; MNASNet and ShuffleNetV2 get 64 too: at 32 their last
    # map is 1x1, where torch.ao's int8 mean fails at run time (the x86 engine refuses that in one line, tested).
    input_size: int = 32


def import_torchvision():
    """torchvision.models, importable beside the CPU torch wheel (see the module docstring); a clear error without it."""
    try:
        import torchvision.models as models
        return models
    except ImportError as exc:
        raise SlimlabError("the architecture suite needs torchvision: pip install torchvision==0.28.0 (the release for torch 2.13)") from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    lib = torch.library.Library("torchvision", "DEF")  # noqa: the schemas of the compiled ops torchvision's import touches
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    import sys
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import left half-initialised modules
    import torchvision.models as models
    return models


_KEEP: list = []  # a Library object unregisters its definitions when collected


def _resnet(block: str, groups: int = 1, width: int = 64) -> Callable[[int, Size], nn.Module]:
    def build(num_classes: int, size: Size) -> nn.Module:
        tv = import_torchvision()
        full = {"BasicBlock": [2, 2, 2, 2], "Bottleneck": [3, 4, 6, 3]}[block]
        layers = full if size == "full" else [1, 1, 1, 1]
        return tv.resnet.ResNet(getattr(tv.resnet, block), layers, num_classes=num_classes, groups=groups, width_per_group=width)
    return build


def _simple(name: str, test_kwargs: dict | None = None, **always) -> Callable[[int, Size], nn.Module]:
    def build(num_classes: int, size: Size) -> nn.Module:
        tv = import_torchvision()
        return getattr(tv, name)(num_classes=num_classes, **always, **(test_kwargs or {} if size == "test" else {}))
    return build


def _narrow_classifier(name: str) -> Callable[[int, Size], nn.Module]:
    """VGG and AlexNet with their published features and adaptive pooling; at test size the two hidden classifier
    layers are 256 wide instead of 4096 (120M of VGG-11's 129M parameters sit there)."""
    def build(num_classes: int, size: Size) -> nn.Module:
        model = getattr(import_torchvision(), name)(num_classes=num_classes)
        if size == "test":
            old = [m for m in model.classifier if isinstance(m, nn.Linear)]
            new = iter([nn.Linear(old[0].in_features, 256), nn.Linear(256, 256), nn.Linear(256, num_classes)])
            model.classifier = nn.Sequential(*[next(new) if isinstance(m, nn.Linear) else m for m in model.classifier])
        return model
    return build


def _densenet(num_classes: int, size: Size) -> nn.Module:
    tv = import_torchvision()
    if size == "full":
        return tv.densenet121(num_classes=num_classes)
    return tv.densenet.DenseNet(growth_rate=12, block_config=(2, 2, 2), num_init_features=24, num_classes=num_classes)


def _convnext(num_classes: int, size: Size) -> nn.Module:
    tv = import_torchvision()
    if size == "full":
        return tv.convnext_tiny(num_classes=num_classes)
    cfg = tv.convnext.CNBlockConfig
    return tv.convnext.ConvNeXt([cfg(48, 96, 1), cfg(96, 192, 1), cfg(192, None, 1)], stochastic_depth_prob=0.0, num_classes=num_classes)


def _vit(num_classes: int, size: Size) -> nn.Module:
    tv = import_torchvision()
    if size == "full":
        return tv.vit_b_16(num_classes=num_classes, image_size=224)
    return tv.vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64,
                                                   mlp_dim=128, num_classes=num_classes)


def _swin(num_classes: int, size: Size) -> nn.Module:
    tv = import_torchvision()
    if size == "full":
        return tv.swin_t(num_classes=num_classes)
    return tv.swin_transformer.SwinTransformer(patch_size=[2, 2], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                                               stochastic_depth_prob=0.0, num_classes=num_classes)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("resnet18", "ResNet", "plain residual blocks, one ReLU module called twice per block", _resnet("BasicBlock")),
    Architecture("resnet50", "ResNet", "bottleneck blocks, projection shortcuts", _resnet("Bottleneck")),
    Architecture("resnext50_32x4d", "ResNeXt", "grouped 3x3 convolutions (32 groups)", _resnet("Bottleneck", groups=32, width=4)),
    Architecture("wide_resnet50_2", "Wide ResNet", "bottlenecks twice as wide", _resnet("Bottleneck", width=128)),
    Architecture("mobilenet_v2", "MobileNet", "inverted residuals, depthwise convolutions, ReLU6", _simple("mobilenet_v2", {"width_mult": 0.5})),
    Architecture("mobilenet_v3_small", "MobileNet", "hardswish, squeeze-excitation", _simple("mobilenet_v3_small")),
    Architecture("efficientnet_b0", "EfficientNet", "MBConv, SiLU, squeeze-excitation, stochastic depth", _simple("efficientnet_b0")),
    Architecture("mnasnet0_5", "MNASNet", "searched inverted residuals", _simple("mnasnet0_5"), 64),
    Architecture("shufflenet_v2_x0_5", "ShuffleNet", "channel split, concatenation and shuffle", _simple("shufflenet_v2_x0_5"), 64),
    Architecture("densenet", "DenseNet", "dense concatenation", _densenet),
    Architecture("squeezenet1_1", "SqueezeNet", "fire modules (concatenated expand branches), conv classifier", _simple("squeezenet1_1")),
    Architecture("googlenet", "GoogLeNet", "inception branches concatenated", _simple("googlenet", aux_logits=False, init_weights=False)),
    Architecture("regnet_x_400mf", "RegNet", "grouped bottlenecks", _simple("regnet_x_400mf")),
    Architecture("regnet_y_400mf", "RegNet", "grouped bottlenecks with squeeze-excitation", _simple("regnet_y_400mf")),
    Architecture("convnext", "ConvNeXt", "7x7 depthwise, LayerNorm, layer scale, GELU MLP", _convnext),
    Architecture("vgg11_bn", "VGG", "plain conv stack, adaptive pooling to 7x7, large classifier", _narrow_classifier("vgg11_bn")),
    Architecture("alexnet", "AlexNet", "large-stride convs, adaptive pooling that upsamples", _narrow_classifier("alexnet"), 64),
    Architecture("vit", "ViT", "patch embedding, multi-head attention, class token", _vit),
    Architecture("swin", "Swin", "shifted-window attention, patch merging, LayerNorm", _swin),
]}


def build_architecture(name: str, num_classes: int = 10, size: Size = "test", seed: int = 0) -> nn.Module:
    """The named suite architecture with seeded random weights, in eval mode."""
    if name not in ARCHITECTURES:
        raise SlimlabError(f"unknown suite architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    return trained_like_scales_(ARCHITECTURES[name].build(num_classes, size)).eval()


@torch.no_grad()
def trained_like_scales_(model: nn.Module) -> nn.Module:
    """Weights an untrained model holds at zero or near it are given a trained model's scale: ViT zero-initialises its
    head (every logit would be its bias, so any two models agree exactly) and ConvNeXt its layer scales to 1e-6 (every
    block would add nothing). Zero weight matrices get N(0, 0.02); layer scales 0.1."""
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not p.any():
            p.normal_(0, 0.02)
        elif "layer_scale" in name and p.abs().max() < 1e-3:
            p.fill_(0.1)
    return model


@torch.no_grad()
def set_norm_statistics_(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Batch-norm running statistics from data (a cumulative average over `batches`), so a random-weight model's
    activations have the scale of a trained one's: at initialisation they can shrink to 1e-10, where no error figure
    means anything."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m in norms:
        m.momentum = 0.1
    return model.eval()
