"""Training-time branches: extra conv-bn branches beside each kxk conv-bn, folded back into it after training.

During training every kxk convolution that feeds a batch norm gets parallel branches, each with its own batch
norm, whose outputs are summed: a 1x1 branch (`pointwise`, as in RepVGG, Ding et al. 2021), a 1xk and a kx1
branch (`asymmetric`, ACNet, Ding et al. 2019), or all three (`both`). Convolution is linear, so after training
the branches fold exactly into one kxk kernel: the saved model has the original architecture, parameter count and
speed. Only the optimization sees the extra parameters.

A convolution is taken to feed the batch norm registered right after it in the same parent module (conv1/bn1,
or consecutive entries of an nn.Sequential), which is how the built-in models and torchvision's are written.
Folding checks that the folded model computes what the branched one did, so a model whose forward pairs its
layers differently fails loudly instead of silently changing.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from slimlab.errors import SlimlabError

KINDS = ("pointwise", "asymmetric", "both")


class BranchedConvBN(nn.Module):
    """conv-bn plus parallel conv-bn branches; stands where the conv was, while the bn's slot holds an Identity."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, kind: str):
        super().__init__()
        self.conv, self.bn = conv, bn
        k = conv.kernel_size[0]
        pad = k // 2
        shapes = {"pointwise": [(1, 1)], "asymmetric": [(1, k), (k, 1)], "both": [(1, 1), (1, k), (k, 1)]}[kind]
        self.branches = nn.ModuleList()
        for kh, kw in shapes:
            branch_conv = nn.Conv2d(conv.in_channels, conv.out_channels, (kh, kw), conv.stride,
                                    (pad if kh > 1 else 0, pad if kw > 1 else 0), bias=False)
            nn.init.kaiming_normal_(branch_conv.weight, mode="fan_out", nonlinearity="relu")
            branch_bn = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum)
            with torch.no_grad():  # a zero-initialized residual branch stays zero at the start with its branches
                branch_bn.weight.copy_(bn.weight)
                branch_bn.bias.zero_()
            self.branches.append(nn.Sequential(branch_conv, branch_bn))
        memory_format = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        self.branches.to(conv.weight.device, memory_format=memory_format)

    def forward(self, x):
        out = self.bn(self.conv(x))
        for branch in self.branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kxk kernel and per-channel bias that compute the same as all branches in eval mode."""
        k = self.conv.kernel_size[0]
        weight, bias = _fold_bn(self.conv, self.bn)
        for branch_conv, branch_bn in self.branches:
            w, b = _fold_bn(branch_conv, branch_bn)
            kh, kw = branch_conv.kernel_size
            top, left = (k - kh) // 2, (k - kw) // 2
            weight[:, :, top:top + kh, left:left + kw] += w  # a smaller kernel sits at the centre of the kxk one
            bias += b
        return weight, bias


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale[:, None, None, None], bn.bias + (conv_bias - bn.running_mean) * scale


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels):
        return False
    kh, kw = conv.kernel_size
    # The centre-embedding identity holds for odd square kernels with 'same'-style zero padding, no dilation or groups.
    return (kh == kw and kh > 1 and kh % 2 == 1 and conv.padding == (kh // 2, kw // 2) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros" and bn.affine and bn.track_running_stats)


def add_branches(model: nn.Module, kind: str) -> int:
    """Wrap every foldable conv-bn pair of `model` in place; returns how many were wrapped."""
    if kind not in KINDS:
        raise SlimlabError(f"train.branches: unknown kind '{kind}'; known: none, {', '.join(KINDS)}")
    if has_branches(model):  # wrapping again would nest branches inside branches
        raise SlimlabError("train.branches: the model already has training-time branches; fold them first")
    wrapped = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if _foldable(conv, bn):
                setattr(parent, conv_name, BranchedConvBN(conv, bn, kind))
                setattr(parent, bn_name, nn.Identity())
                wrapped += 1
    if wrapped == 0:
        raise SlimlabError(f"train.branches: {type(model).__name__} has no kxk convolution registered right before a "
                           "batch norm of its width, so there is nothing to add branches to")
    return wrapped


def has_branches(model: nn.Module) -> bool:
    return any(isinstance(m, BranchedConvBN) for m in model.modules())


@torch.no_grad()
def fold_branches(model: nn.Module, batches: Iterable[torch.Tensor], tolerance: float = 1e-3) -> None:
    """Fold every branched conv-bn back into its original conv and batch norm, in place.

    The folded kernel W and bias b give W*x + b in eval mode. The batch norm then gets the measured per-channel
    mean m and variance v of W*x on `batches` as running statistics and weight sqrt(v + eps), bias m + b: eval
    output is exactly W*x + b, and in train mode (retraining after pruning, QAT) the batch statistics are close
    to the running ones, so the function does not jump either."""
    batches = list(batches)
    if not batches:
        raise SlimlabError("train.branches: folding needs at least one batch of training images")
    was_training = model.training
    model.eval()
    before = [model(x) for x in batches]
    sites = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, BranchedConvBN)]
    folded = {id(child): child.folded() for _, _, child in sites}
    moments: dict[int, list] = {}

    def record(module, inputs, output, key):
        out = output.double()
        moments.setdefault(key, []).append((out.sum((0, 2, 3)), (out * out).sum((0, 2, 3)), out.numel() / out.shape[1]))

    handles = []
    for parent, name, child in sites:
        conv, bn = child.conv, child.bn
        conv.weight.copy_(folded[id(child)][0])
        if conv.bias is not None:
            conv.bias.zero_()
        setattr(parent, name, conv)
        bn_name = _slot_after(parent, name)
        setattr(parent, bn_name, bn)
        handles.append(conv.register_forward_hook(lambda m, i, o, key=id(child): record(m, i, o, key)))
    # While measuring, each batch norm only adds b (mean 0, var 1 - eps, weight 1), so later layers see W*x + b.
    for _, _, child in sites:
        bn = child.bn
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
        bn.weight.fill_(1)
        bn.bias.copy_(folded[id(child)][1])
    for x in batches:
        model(x)
    for h in handles:
        h.remove()
    for _, _, child in sites:
        sums = moments[id(child)]
        count = sum(c for _, _, c in sums)
        mean = sum(s for s, _, _ in sums) / count
        var = (sum(q for _, q, _ in sums) / count - mean * mean).clamp_min(0)
        bn = child.bn
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + folded[id(child)][1])
    after = [model(x) for x in batches]
    model.train(was_training)
    worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(after, before))
    if worst > tolerance:
        raise SlimlabError(f"train.branches: the folded model differs from the branched one by {worst:.2g} (relative); "
                           "the model's forward does not apply each batch norm right after the convolution before it")


def _slot_after(parent: nn.Module, name: str) -> str:
    names = [n for n, _ in parent.named_children()]
    return names[names.index(name) + 1]
