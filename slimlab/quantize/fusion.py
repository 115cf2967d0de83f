"""Find conv-bn(-relu) and linear-relu chains in any model and fuse them for eager-mode quantization."""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.ao.quantization import fuse_modules, fuse_modules_qat

from slimlab.errors import ConfigError, SlimlabError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def fusable_groups(model: nn.Module) -> list[list[str]]:
    """Module-name chains [conv, bn(, relu)], [conv, relu], [linear, relu] that run back to back in `model`'s forward.

    Read from the traced graph, so a ReLU module reused elsewhere (torchvision's blocks) is never fused away; models
    that cannot be traced fall back to naming conventions (Sequential neighbours, convN/bnN/reluN attributes).
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow; the naming conventions still cover the usual layouts
        return _groups_by_name(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        chain = [node]
        for wanted in _next_types(modules[node.target]):
            users = list(chain[-1].users)
            if len(users) != 1 or users[0].op != "call_module" or calls[users[0].target] != 1:
                break
            if not isinstance(modules[users[0].target], wanted):
                continue  # the optional BN is absent: try the ReLU next
            chain.append(users[0])
        if len(chain) > 1:
            groups.append([n.target for n in chain])
    return groups


def _next_types(module: nn.Module) -> list[type]:
    if isinstance(module, CONVS):
        return [NORMS[type(module)], nn.ReLU]
    if isinstance(module, nn.Linear):
        return [nn.ReLU]
    return []


def _groups_by_name(model: nn.Module) -> list[list[str]]:
    groups = []
    for prefix, parent in model.named_modules():
        children = dict(parent.named_children())
        dot = f"{prefix}." if prefix else ""
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for i, name in enumerate(names):
                if isinstance(children[name], CONVS) and i + 1 < len(names) and isinstance(children[names[i + 1]], nn.BatchNorm2d):
                    tail = names[i + 2:i + 3] if i + 2 < len(names) and isinstance(children[names[i + 2]], nn.ReLU) else []
                    groups.append([dot + n for n in [name, names[i + 1], *tail]])
        for name, child in children.items():
            suffix = name.removeprefix("conv")
            if name.startswith("conv") and isinstance(child, CONVS) and isinstance(children.get(f"bn{suffix}"), nn.BatchNorm2d):
                tail = [f"relu{suffix}"] if isinstance(children.get(f"relu{suffix}"), nn.ReLU) else []
                groups.append([dot + n for n in [name, f"bn{suffix}", *tail]])
    return groups


def fuse_(model: nn.Module, qat: bool = False) -> list[list[str]]:
    """Fuse every fusable chain in place (BN folded into the conv for inference, kept trainable for QAT); returns the groups."""
    groups = fusable_groups(model)
    if groups:
        (fuse_modules_qat if qat else fuse_modules)(model, groups, inplace=True)
    return groups


def fused_copy(model: nn.Module) -> nn.Module:
    """An eval-mode float copy with the same fusion as eager quantization applies: the per-layer error reference."""
    reference = copy.deepcopy(model).cpu().eval()
    fuse_(reference)
    return reference


def check_fusion(model: nn.Module, example: torch.Tensor, skip: list[str], tolerance: float = 1e-3) -> None:
    """Refuse a fusion that changes what the model computes, or a skip that fusion would ignore.

    An untraceable model is fused by layer names, which can pair a conv with a batch norm that runs before it
    (pre-activation blocks). And a batch norm or ReLU fused into its conv is no longer a layer of its own, so
    skipping it alone would leave the fused int8 layer in place."""
    groups = fusable_groups(model)
    for group in groups:
        for name in group[1:]:
            if name in skip:
                raise ConfigError(f"skip: {name!r} is fused into {group[0]!r} for int8; skip {group[0]!r} to keep the whole "
                                  f"group ({', '.join(group)}) in float")
    reference = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        expected = reference(example).float()
        fuse_(reference)
        got = reference(example).float()
    if (got - expected).norm() > tolerance * expected.norm().clamp_min(1e-12):
        raise SlimlabError(f"fusing {type(model).__name__}'s conv-bn(-relu) groups changed its output: torch.fx could not "
                           "trace it, so the groups were guessed from the names convN/bnN/reluN, and one of them does not run "
                           "in that order (a batch norm before its conv?); rename those layers, or make the forward traceable")
