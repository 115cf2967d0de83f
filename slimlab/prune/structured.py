"""Structured pruning: whole channels ranked by a registered importance, physically removed so the model becomes a smaller dense one."""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from slimlab.errors import ConfigError, SlimlabError
from slimlab.measure import count_parameters
from slimlab.prune.channel_groups import ChannelGroup, find_channel_groups
from slimlab.prune.methods import PruneContext, get_method
from slimlab.prune.selection import LayerFilter, select_layers
from slimlab.prune.unstructured import Scope


@dataclass(frozen=True)
class PrunedGroup:
    """One channel group after pruning: its layers and how many channels it had and kept."""

    producers: tuple[str, ...]
    residual: bool
    before: int
    after: int


Engine = Literal["auto", "slimlab", "torch_pruning"]
ENGINES = ("auto", "slimlab", "torch_pruning")
# auto keeps the own tracer (exact global ranking, residual groups) unless Torch-Pruning leaves at least this fraction
# of the model's parameters fewer: on the architecture suite it wins by 15-37 points where it covers concatenations,
# grouped convolutions and LayerNorm (docs/coverage.md), and ties elsewhere.
AUTO_MARGIN = 0.05


def prune_structured_(model: nn.Module, amount: float, example_inputs: torch.Tensor | tuple | None = None,
                      method: str = "ln_structured", scope: Scope = "local", select: LayerFilter | None = None,
                      residual_channels: bool = True, round_to: int = 1, context: PruneContext | None = None,
                      engine: Engine = "auto") -> list[PrunedGroup]:
    """Remove the `amount` fraction of channels that the registered structured `method` scores lowest, from every
    prunable group (local) or overall (global).

    `engine`: slimlab's own channel tracer, Torch-Pruning's dependency graph (tp_engine.py), or `auto`: both on copies,
    keeping Torch-Pruning only when it removed AUTO_MARGIN more of the parameters (the own tracer alone when residual
    channels are spared). A group is pruned only when all layers producing its channels are selected. Returns each
    pruned group's channel counts (Torch-Pruning: per layer); the engine that pruned is on
    `model.slimlab_structured_engine`, what it pruned and kept on `model.slimlab_structured_coverage`.
    `example_inputs` defaults to one 32x32 image.
    """
    chosen = get_method(method, "structured")
    _check_arguments(amount, scope, round_to, engine)
    example = example_inputs if example_inputs is not None else default_example_input(model)
    context = context if context is not None else PruneContext(model=model)
    if chosen.needs_batches and context.batches is None:
        raise ConfigError(f"method {method!r} scores channels by their gradients: pass context=PruneContext(model, batches=...)")
    run = {"slimlab": lambda m: _prune_own_(m, amount, example, chosen, scope, select, residual_channels, round_to, context),
           "torch_pruning": lambda m: _prune_tp_(m, amount, example, method, scope, select, round_to, context)}
    if not residual_channels:  # Torch-Pruning has no way to spare residual channels
        if engine == "torch_pruning":
            raise ConfigError("residual_channels: false needs engine 'slimlab'; Torch-Pruning prunes residual channels too")
        engine = "slimlab"
    if engine != "auto":
        groups = run[engine](model)
        model.slimlab_structured_engine = engine
        return groups
    tried, refusals = {}, []
    for name, prune in run.items():
        candidate = copy.deepcopy(model)
        try:
            tried[name] = (prune(candidate), candidate, count_parameters(candidate)["params"])
        except SlimlabError as exc:
            refusals.append(f"{name}: {exc}")
    if not tried:
        raise SlimlabError(f"no structured engine could prune {type(model).__name__}: " + "; ".join(refusals))
    total = count_parameters(model)["params"]
    own = tried.get("slimlab")
    best = "slimlab" if own and ("torch_pruning" not in tried or
                                 (own[2] - tried["torch_pruning"][2]) / total < AUTO_MARGIN) else "torch_pruning"
    groups, pruned, _ = tried[best]
    model.__dict__.update(pruned.__dict__)  # the pruned copy's layers become the model's, in place
    model.slimlab_structured_engine = best
    return groups


def _reason_kind(why: str) -> str:
    """A tracer's reason, without the layer names, so a summary can count them: 'tied by a concatenation'."""
    for marker, kind in (("used by cat", "tied by a concatenation"), ("output of cat", "tied by a concatenation"),
                         ("grouped convolution", "grouped convolution"), ("model output", "feeds the output"),
                         ("model input", "model input or raw parameter"), ("meet in one operation", "sizes meet in one operation")):
        if marker in why:
            return kind
    return "unsupported op: " + why.split(" (")[0][:80]


def _check_arguments(amount: float, scope: str, round_to: int, engine: str) -> None:
    if not 0 <= amount < 1:
        raise ConfigError(f"amount must be a fraction in [0, 1) of the channels, got {amount}")
    if scope not in ("local", "global"):
        raise ConfigError(f"scope must be 'local' or 'global', got {scope!r}")
    if round_to < 1:
        raise ConfigError(f"round_to must be a positive number of channels, got {round_to}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def _prune_tp_(model: nn.Module, amount: float, example, method: str, scope: Scope, select: LayerFilter | None,
               round_to: int, context: PruneContext) -> list[PrunedGroup]:
    from slimlab.prune.tp_engine import prune_torch_pruning_

    selected = set(select_layers(model, select))
    changed = prune_torch_pruning_(model, amount, example, method, scope, selected, round_to, context)
    if not changed:
        raise SlimlabError(f"Torch-Pruning removed no channel of {type(model).__name__}")
    model.slimlab_structured_coverage = {"pruned": len(changed), "kept": {"not pruned by Torch-Pruning (output layer, unselected or tied)":
                                                                       len(select_layers(model, select)) - len(changed)}}
    return [PrunedGroup((name,), False, before, after) for name, before, after in changed]


def _prune_own_(model: nn.Module, amount: float, example, chosen, scope: Scope, select: LayerFilter | None,
                residual_channels: bool, round_to: int, context: PruneContext) -> list[PrunedGroup]:
    selected = set(select_layers(model, select))
    found = find_channel_groups(model, example)
    groups = [g for g in found if g.prunable and set(g.producers) <= selected and (residual_channels or not g.residual)]
    if not groups:
        reasons = sorted({g.blocked for g in found if g.blocked})
        raise ConfigError(f"no channel group of {type(model).__name__} can be pruned with this selection"
                          + (f" (blocked: {'; '.join(reasons[:3])})" if reasons else ""))
    context = replace(context, model=model)
    producers = {f"{name}.weight": model.get_submodule(name).weight for g in groups for name in g.producers}
    channel_scores = chosen.score(producers, context)
    scores = [_group_importance(g, channel_scores) for g in groups]
    keep_counts = _keep_counts(groups, scores, amount, scope, round_to)
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for group, score, keep in zip(groups, scores, keep_counts):
        kept = torch.topk(score, keep).indices.sort().values  # original channel order survives
        for name in group.producers + group.channelwise:
            out_keep[name] = kept
        for name, factor in group.consumers:
            in_keep[name] = (kept[:, None] * factor + torch.arange(factor)).reshape(-1) if factor > 1 else kept
    for name in set(out_keep) | set(in_keep):
        _slice_module(model.get_submodule(name), out_keep.get(name), in_keep.get(name))
    if all(keep == g.size for g, keep in zip(groups, keep_counts)):
        raise SlimlabError(f"amount {amount} removes no channel of {type(model).__name__}'s groups (rounded to keep {round_to})")
    kept: dict[str, int] = {}
    for g in found:
        if g not in groups:
            why = g.blocked or ("not selected" if g.producers else "no producing layer")
            kept[_reason_kind(why)] = kept.get(_reason_kind(why), 0) + 1
    model.slimlab_structured_coverage = {"pruned": len(groups), "kept": kept}
    return [PrunedGroup(tuple(g.producers), g.residual, g.size, k) for g, k in zip(groups, keep_counts)]


def prune_ln_structured_(model: nn.Module, amount: float, example_inputs: torch.Tensor | tuple | None = None,
                         scope: Scope = "local", norm: float = 1.0, select: LayerFilter | None = None,
                         residual_channels: bool = True, round_to: int = 1, engine: Engine = "auto") -> list[PrunedGroup]:
    """Remove the `amount` fraction of channels with the smallest Ln norm from every prunable group (local) or overall (global)."""
    return prune_structured_(model, amount, example_inputs, "ln_structured", scope, select, residual_channels, round_to,
                             PruneContext(model=model, norm=norm), engine)


def default_example_input(model: nn.Module) -> torch.Tensor:
    """A 32x32 image batch of one for the first convolution's input channels (CIFAR-sized models); pass your own otherwise."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if not isinstance(first, nn.Conv2d):
        raise ConfigError("structured pruning needs example_inputs for models that do not start with a 2-d convolution")
    device = next(model.parameters()).device
    return torch.randn(1, first.in_channels, 32, 32, device=device)


def _group_importance(group: ChannelGroup, channel_scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per channel, the method's score averaged over the group's producers: tied channels stay or go together."""
    total = torch.zeros(group.size)
    for name in group.producers:
        score = channel_scores.get(f"{name}.weight")
        if score is None or score.shape != (group.size,):
            raise ConfigError(f"the structured score gave no {group.size} per-channel values for {name}; return one per output channel")
        total += score.detach().float().cpu()
    return total / len(group.producers)


def _keep_counts(groups: list[ChannelGroup], scores: list[torch.Tensor], amount: float, scope: Scope, round_to: int) -> list[int]:
    if scope == "local":
        counts = [g.size - round(amount * g.size) for g in groups]
    else:
        flat = torch.cat(scores)
        owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
        dropped = owner[torch.topk(flat, round(amount * flat.numel()), largest=False).indices]
        counts = [g.size - int((dropped == i).sum()) for i, g in enumerate(groups)]
    # Every group keeps at least one channel (an empty layer cuts the network), rounded to multiples of round_to.
    rounded = [max(round_to, round(c / round_to) * round_to) for c in counts]
    return [min(g.size, max(1, c)) for g, c in zip(groups, rounded)]


@torch.no_grad()
def _slice_module(module: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> None:
    """Shrink one layer in place: new, smaller parameters and buffers, and matching size attributes."""
    def take(tensor: torch.Tensor | None, index: torch.Tensor | None, dim: int):
        if tensor is None or index is None:
            return tensor
        return tensor.index_select(dim, index.to(tensor.device)).clone(memory_format=torch.contiguous_format)

    def replace(name: str, value: torch.Tensor | None) -> None:
        old = getattr(module, name, None)
        if isinstance(old, nn.Parameter):
            setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
        elif old is not None:
            setattr(module, name, value)

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        for attr in ("weight", "bias", "running_mean", "running_var"):
            replace(attr, take(getattr(module, attr), out_keep, 0))
        module.num_features = len(out_keep)
    elif isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1
        replace("weight", take(take(module.weight, out_keep, 0), None if depthwise else in_keep, 1))
        replace("bias", take(module.bias, out_keep, 0))
        if out_keep is not None:
            module.out_channels = len(out_keep)
        if depthwise:
            module.in_channels = module.groups = module.out_channels
        elif in_keep is not None:
            module.in_channels = len(in_keep)
    elif isinstance(module, nn.Linear):
        replace("weight", take(take(module.weight, out_keep, 0), in_keep, 1))
        replace("bias", take(module.bias, out_keep, 0))
        module.out_features, module.in_features = module.weight.shape
    else:
        raise SlimlabError(f"cannot shrink a {type(module).__name__}; the channel tracer should have blocked it")
