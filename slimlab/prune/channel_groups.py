"""Channel dependencies found by tracing a model with torch.fx: which layers' channels must be removed together.

A "channel space" is the set of channels of one tensor's dimension 1. A convolution or linear layer starts a new
space (its output channels); batch norms, activations and pooling keep it; a residual add ties the spaces of its
operands into one group, so a ResNet stage width is pruned consistently across every block that adds into it.
Anything not understood (concat, indexing, grouped convs, the model's inputs and outputs) blocks its spaces, so an
unknown model is pruned only where pruning is provably consistent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from slimlab.errors import SlimlabError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_KEEPS_CHANNELS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
                   nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
_SAME_FUNCTIONS = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu",
                   "mish", "dropout", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool2d",
                   "adaptive_max_pool2d", "interpolate", "clone", "contiguous", "detach", "float", "to"}
_ELEMENTWISE = {"add", "add_", "iadd", "mul", "mul_", "imul", "sub", "truediv", "div"}
_FLATTEN = {"flatten", "view", "reshape"}
_REDUCE = {"mean", "sum", "amax"}
_NON_TENSOR = {"size", "dim", "getattr", "numel"}


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together, and every layer whose weights change when they are."""

    size: int
    producers: list[str] = field(default_factory=list)  # conv/linear whose output channels these are (weight dim 0)
    channelwise: list[str] = field(default_factory=list)  # batch norms and depthwise convs acting per channel
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (layer, input features per channel) reading them (dim 1)
    residual: bool = False  # tied across an elementwise add/mul of two branches
    blocked: str = ""  # why this group must not be pruned; empty when it may

    @property
    def prunable(self) -> bool:
        return not self.blocked and bool(self.producers)


@dataclass(frozen=True)
class _Val:
    space: int
    factor: int = 1  # features per channel after flattening (C,H,W) -> C*H*W


class _Spaces:
    """Union-find over channel spaces, collecting each group's members as the graph is walked."""

    def __init__(self):
        self.parent: list[int] = []
        self.groups: list[ChannelGroup] = []

    def new(self, size: int, blocked: str = "") -> int:
        self.parent.append(len(self.parent))
        self.groups.append(ChannelGroup(size, blocked=blocked))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def group(self, s: int) -> ChannelGroup:
        return self.groups[self.find(s)]

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        if ga.size != gb.size:
            ga.blocked = gb.blocked = f"sizes {ga.size} and {gb.size} meet in one operation"
        self.parent[rb] = ra
        ga.producers += gb.producers
        ga.channelwise += gb.channelwise
        ga.consumers += gb.consumers
        ga.residual = True
        ga.blocked = ga.blocked or gb.blocked

    def block(self, val: _Val | None, reason: str) -> None:
        if val is not None:
            g = self.group(val.space)
            g.blocked = g.blocked or reason

    def result(self) -> list[ChannelGroup]:
        return [g for s, g in enumerate(self.groups) if self.find(s) == s]


def find_channel_groups(model: nn.Module, example_inputs: torch.Tensor | tuple) -> list[ChannelGroup]:
    """Trace `model` on `example_inputs` and return its channel groups (prunable or with the reason they are not)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow and the like; fx raises many types
        raise SlimlabError(f"structured pruning traces the model with torch.fx, which failed on {type(model).__name__}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    modes = {m: m.training for m in model.modules()}
    model.eval()  # shape propagation runs the model; in train mode it would move batch-norm statistics
    try:
        with torch.no_grad():
            ShapeProp(graph_module).propagate(*inputs)
    finally:
        for m, training in modes.items():
            m.train(training)
    spaces = _Spaces()
    values: dict[fx.Node, _Val | None] = {}
    called: dict[str, tuple[_Val | None, _Val | None]] = {}
    for node in graph_module.graph.nodes:
        values[node] = _visit(node, values, spaces, model, called)
    return spaces.result()


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _visit(node: fx.Node, values: dict, spaces: _Spaces, model: nn.Module, called: dict) -> _Val | None:
    shape = _shape(node)
    inputs = [values.get(n) for n in node.all_input_nodes]
    if node.op == "output":
        for v in inputs:
            spaces.block(v, "is a model output")
        return None
    if node.op in ("placeholder", "get_attr"):
        return _Val(spaces.new(shape[1], "is a model input or a raw parameter")) if shape and len(shape) > 1 else None
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        # A module with weights or statistics called twice must see the same channels at every call; a stateless one
        # (the ReLU torchvision's blocks call after each convolution) is a new operation at every call.
        stateful = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        if node.target in called and stateful:
            first_in, first_out = called[node.target]
            if first_in is not None and inputs and inputs[0] is not None:
                spaces.union(first_in.space, inputs[0].space)
            return first_out
        out = _visit_module(node, module, inputs[0] if inputs else None, shape, spaces)
        called[node.target] = (inputs[0] if inputs else None, out)
        return out
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return _visit_function(node, name, inputs, shape, spaces)


def _visit_module(node: fx.Node, module: nn.Module, x: _Val | None, shape, spaces: _Spaces) -> _Val | None:
    name = str(node.target)
    if isinstance(module, _CONV):
        if x is not None and x.factor != 1:
            spaces.block(x, f"{name} reads flattened features")
        if module.groups == 1:
            if x is not None:
                spaces.group(x.space).consumers.append((name, 1))
            out = spaces.new(module.out_channels)
            spaces.group(out).producers.append(name)
            return _Val(out)
        if module.groups == module.in_channels == module.out_channels and x is not None:
            spaces.group(x.space).channelwise.append(name)  # depthwise: channel c in, channel c out
            return x
        spaces.block(x, f"{name} is a grouped convolution")
        return _Val(spaces.new(module.out_channels, f"{name} is a grouped convolution"))
    if isinstance(module, nn.Linear):
        if x is not None and (len(_shape(node.args[0]) or ()) != 2):
            spaces.block(x, f"{name} acts on the last dimension of a tensor with more than two dimensions")
        elif x is not None:
            spaces.group(x.space).consumers.append((name, x.factor))
        out = spaces.new(module.out_features)
        spaces.group(out).producers.append(name)
        return _Val(out)
    if isinstance(module, _NORM) and x is not None and x.factor == 1:
        spaces.group(x.space).channelwise.append(name)
        return x
    if isinstance(module, _KEEPS_CHANNELS):
        return x
    if isinstance(module, nn.Flatten):
        return _flatten(node, x, shape, spaces)
    spaces.block(x, f"{name} ({type(module).__name__}) is not understood by the channel tracer")
    return _Val(spaces.new(shape[1], "output of an unknown layer")) if shape and len(shape) > 1 else None


def _visit_function(node: fx.Node, name: str, inputs: list, shape, spaces: _Spaces) -> _Val | None:
    first = inputs[0] if inputs else None
    if shape is None and name in _NON_TENSOR:
        return None
    if name in _SAME_FUNCTIONS and shape is not None:
        for v in inputs[1:]:
            spaces.block(v, f"used as a parameter of {name}")
        return first
    if name in _ELEMENTWISE and shape is not None:
        tied = [(v, _shape(n)) for v, n in zip(inputs, node.all_input_nodes) if v is not None]
        same = [v for v, s in tied if s is not None and len(s) == len(shape) and s[1] == shape[1]]
        for v, s in tied:
            if v not in same and not (s and len(s) > 1 and s[1] == 1):
                spaces.block(v, f"broadcast in {name}")
        for v in same[1:]:
            if v.factor != same[0].factor:
                spaces.block(v, f"{name} of tensors flattened differently")
            spaces.union(same[0].space, v.space)
        # A lower-rank operand lines up with the trailing dimensions; if one of its sizes lands on the channel
        # dimension (a (C,) scale on an (N, C) tensor), it would need slicing too, which the tracer does not do.
        for n in node.all_input_nodes:
            s = _shape(n)
            if s is not None and len(shape) - 1 <= len(s) < len(shape) and s[len(s) - len(shape) + 1] != 1:
                for v in same:
                    spaces.block(v, f"{name} with a {tuple(s)} tensor broadcast over the channels")
        return same[0] if same else None
    if name in _FLATTEN:
        return _flatten(node, first, shape, spaces)
    if name in _REDUCE and shape is not None and first is not None:
        before = _shape(node.all_input_nodes[0])
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if before and len(shape) > 1 and shape[:2] == before[:2] and dims and all(d % len(before) > 1 for d in dims):
            return first
    for v in inputs:
        spaces.block(v, f"used by {name}, which the channel tracer does not follow")
    return _Val(spaces.new(shape[1], f"output of {name}")) if shape and len(shape) > 1 else None


def _flatten(node: fx.Node, x: _Val | None, shape, spaces: _Spaces) -> _Val | None:
    before = _shape(node.all_input_nodes[0]) if node.all_input_nodes else None
    if x is not None and before and shape and len(shape) == 2 and shape[0] == before[0] and shape[1] == math.prod(before[1:]):
        return _Val(x.space, x.factor * math.prod(before[2:]))
    spaces.block(x, f"reshaped by {node.target} in a way other than flattening from dimension 1")
    return _Val(spaces.new(shape[1], "reshaped")) if shape and len(shape) > 1 else None
