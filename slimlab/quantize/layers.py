"""Which modules are weighted layers, which match skip patterns, and in what dtype each layer's weights ended up."""
from __future__ import annotations

import fnmatch
from typing import Iterable

import torch
from torch import nn
from torch.ao.nn.intrinsic import _FusedModule

from slimlab.models.calls import first_calls

FLOAT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
                nn.RNNBase, nn.RNNCellBase, nn.Embedding, nn.EmbeddingBag)
ISLAND_ATTRIBUTE = "float_layer"  # the attribute under which a skipped layer sits inside its float island


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True if a module name matches a glob, or lies inside a module that does ('layer1' covers 'layer1.0.conv1')."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def outermost_matches(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the outermost modules matching the patterns (a matched container is not repeated for its children)."""
    patterns = list(patterns)
    found: list[str] = []
    for name, _ in model.named_modules():
        if name and matches(name, patterns) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def is_quantized_layer(module: nn.Module) -> bool:
    """A converted module that computes with quantized weights (static or dynamic); stubs and QFunctional excluded."""
    path = type(module).__module__
    return path.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")) and (
        callable(getattr(module, "weight", None)) or hasattr(module, "_all_weight_values"))


def _quantized_weights(module: nn.Module) -> list[torch.Tensor]:
    if hasattr(module, "_all_weight_values"):  # dynamic RNNs keep one packed weight per gate matrix
        return list(module._weight_bias()["weight"].values())
    return [module.weight()]


def weight_dtype(module: nn.Module) -> str:
    """'int8', 'float16' or 'float32' (etc.): how this layer's weights are stored."""
    if is_quantized_layer(module):
        # Dynamic fp16 layers unpack their weights to fp32; the packed dtype says how they are stored and computed.
        packed = getattr(module, "_packed_params", None)
        dtype = getattr(packed, "dtype", None) or getattr(module, "dtype", None) or _quantized_weights(module)[0].dtype
    else:
        inner = module[0] if isinstance(module, _FusedModule) else module
        dtype = next(inner.parameters()).dtype
    return {torch.qint8: "int8", torch.quint8: "uint8"}.get(dtype, str(dtype).removeprefix("torch."))


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every weighted layer in module order; a fused module counts once, not per part."""
    found, fused = [], []
    for name, module in model.named_modules():
        if any(name.startswith(f + ".") for f in fused):
            continue
        if isinstance(module, _FusedModule):
            fused.append(name)
        if is_quantized_layer(module) or isinstance(module, (*FLOAT_LAYERS, _FusedModule)):
            found.append((name, module))
    return found


WEIGHT_READERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def attention_projections(model: nn.Module) -> list[str]:
    """Linear layers whose weight tensors torch's attention modules read themselves (nn.MultiheadAttention's output
    projection; every Linear of nn.TransformerEncoderLayer and DecoderLayer, whose fast-path check reads them), so a
    module swap breaks them."""
    found = [f"{name}.{child}" if name else child for name, m in model.named_modules() if isinstance(m, WEIGHT_READERS)
             for child, sub in m.named_modules() if child and isinstance(sub, nn.Linear)]
    return list(dict.fromkeys(found))


def uncalled_layers(model: nn.Module, example: torch.Tensor, types: tuple = FLOAT_LAYERS) -> list[str]:
    """Layers of `types` whose forward never runs on `example`: their parent reads their weight itself (torchvision's
    Swin calls F.linear(x, self.qkv.weight)), so swapping the module for a quantized one breaks the parent."""
    called = set(first_calls(model, example, types))
    return [n for n, m in model.named_modules() if isinstance(m, types) and n not in called]


def weight_count(module: nn.Module) -> int:
    """Number of weight elements (biases excluded), float or quantized."""
    if is_quantized_layer(module):
        return sum(w.numel() for w in _quantized_weights(module))
    inner = module[0] if isinstance(module, _FusedModule) else module
    return sum(p.numel() for n, p in inner.named_parameters() if "weight" in n)


def layer_row(name: str, module: nn.Module) -> dict:
    """A layer's float-model name, type, weight dtype and weight count."""
    return {"name": float_name(name), "type": type(module).__name__, "weight_dtype": weight_dtype(module), "weights": weight_count(module)}


def layer_rows(model: nn.Module) -> list[dict]:
    """One row per weighted layer (see layer_row), in module order."""
    return [layer_row(n, m) for n, m in weighted_layers(model)]


def called_module(name: str, modules) -> str:
    """The module a graph engine's name for a further call stands for: ONNX scopes a module's second and third calls
    'conv_1', 'conv_2' (a name that is itself a module of `modules` stays as it is)."""
    base, _, call = name.rpartition("_")
    return base if name not in modules and call.isdigit() and base in modules else name


def float_name(name: str) -> str:
    """The module's name in the float model: drops the level a float island adds around a skipped layer."""
    return name.replace(f".{ISLAND_ATTRIBUTE}", "")


def resolve_skip(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Module names to keep in float; a pattern that names no module is a ConfigError rather than a silent no-op."""
    from slimlab.errors import ConfigError

    patterns = list(patterns)
    names = [n for n, _ in model.named_modules() if n]
    for pattern in patterns:
        if not any(matches(n, [pattern]) for n in names):
            raise ConfigError(f"skip: pattern {pattern!r} matches no module of {type(model).__name__}")
    return outermost_matches(model, patterns)
