"""Unstructured pruning by any registered score (plain bool masks, folded into the weights) and the mask keeper."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Literal

import torch
from torch import nn

from slimlab.errors import ConfigError
from slimlab.prune.methods import PruneContext, get_method
from slimlab.prune.selection import LayerFilter, select_layers

Masks = dict[str, torch.Tensor]  # parameter name ("layer1.0.conv1.weight") -> bool tensor, True = kept
Scope = Literal["local", "global"]


def current_masks(model: nn.Module, select: LayerFilter | None = None) -> Masks:
    """Masks read off the weights (non-zero = kept) of the selected layers: the state left by an earlier prune."""
    return {f"{name}.weight": module.weight.detach() != 0 for name, module in select_layers(model, select).items()}


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Masks) -> None:
    """Zero every pruned weight in place (masks are folded into the weights; no hooks stay behind)."""
    for name, mask in masks.items():
        param = model.get_parameter(name)
        param.mul_(mask.to(param.device))


def prune_unstructured_(model: nn.Module, amount: float, method: str = "l1", scope: Scope = "local",
                        select: LayerFilter | None = None, masks: Masks | None = None, context: PruneContext | None = None,
                        **context_fields) -> Masks:
    """Zero the `amount` fraction of surviving weights that the registered `method` scores lowest, per layer or across
    layers; returns masks. A method that needs data reads it from `context` (or from keyword fields of one: batches,
    loss, max_batches, seed), e.g. prune_unstructured_(model, 0.8, "taylor", batches=[(x, y)])."""
    chosen = get_method(method, "unstructured")
    if context is None:
        context = PruneContext(model=model, **context_fields)
    elif context_fields:
        context = replace(context, **context_fields)
    if chosen.needs_batches and context.batches is None:
        raise ConfigError(f"method {method!r} scores weights by their gradients: pass batches=[(inputs, targets), ...]")
    return _prune_by_score_(model, amount, scope, select, masks, lambda weights: chosen.score(weights, context))


def prune_l1_unstructured_(model: nn.Module, amount: float, scope: Scope = "local", select: LayerFilter | None = None,
                           masks: Masks | None = None) -> Masks:
    """Zero the `amount` fraction of surviving weights with the smallest magnitude, per layer or across layers; returns masks."""
    return prune_unstructured_(model, amount, "l1", scope, select, masks)


def prune_random_unstructured_(model: nn.Module, amount: float, scope: Scope = "local", select: LayerFilter | None = None,
                               masks: Masks | None = None, seed: int = 0) -> Masks:
    """Zero a uniformly random `amount` fraction of surviving weights, per layer or across layers; returns masks."""
    return prune_unstructured_(model, amount, "random", scope, select, masks, seed=seed)


def _prune_by_score_(model: nn.Module, amount: float, scope: Scope, select: LayerFilter | None, masks: Masks | None,
                     score: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Masks:
    if not 0 <= amount <= 1:
        raise ConfigError(f"amount must be a fraction between 0 and 1, got {amount}")
    if scope not in ("local", "global"):
        raise ConfigError(f"scope must be 'local' or 'global', got {scope!r}")
    layers = select_layers(model, select)
    old = current_masks(model, select) if masks is None else masks
    weights = {f"{n}.weight": m.weight for n, m in layers.items()}
    missing = set(weights) - set(old)
    if missing:
        raise ConfigError(f"masks lack selected layers {sorted(missing)[:3]}; pass the masks of the same selection")
    if amount == 0:  # nothing to drop: spare a data-driven score its gradient passes
        new = {n: old[n].to(w.device) for n, w in weights.items()}
        apply_masks_(model, new)
        return new
    raw = score(weights)
    wrong = [n for n, w in weights.items() if n not in raw or raw[n].shape != w.shape]
    if wrong:
        raise ConfigError(f"the pruning score gave no score of the weight's shape for {wrong[0]}; return one per weight")
    # Pruning happens among survivors only: already-pruned weights score +inf, so masks can only shrink.
    scores = {n: raw[n].float().masked_fill(~old[n].to(raw[n].device), float("inf")) for n in weights}
    new: Masks = {}
    if scope == "local":
        for n, s in scores.items():
            new[n] = _drop_lowest(s, round(amount * int(old[n].sum())), old[n].to(s.device))
    else:
        flat = torch.cat([s.reshape(-1).cpu() for s in scores.values()])
        alive = torch.cat([old[n].reshape(-1).cpu() for n in scores])
        kept = _drop_lowest(flat, round(amount * int(alive.sum())), alive)
        offset = 0
        for n, s in scores.items():
            new[n] = kept[offset:offset + s.numel()].view(s.shape).to(s.device)
            offset += s.numel()
    apply_masks_(model, new)
    return new


def _drop_lowest(scores: torch.Tensor, count: int, alive: torch.Tensor) -> torch.Tensor:
    """`alive` with the `count` lowest-scoring entries switched off; exact count, ties broken by position."""
    kept = alive.clone().reshape(-1)
    if count > 0:
        kept[torch.topk(scores.reshape(-1), count, largest=False, sorted=False).indices] = False
    return kept.view(alive.shape)


def mask_sparsity(masks: Masks) -> float:
    """Fraction of masked-out weights over all masked layers together."""
    total = sum(m.numel() for m in masks.values())
    return 1 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def layer_sparsity(masks: Masks) -> dict[str, float]:
    """Fraction of masked-out weights per layer."""
    return {n: 1 - int(m.sum()) / m.numel() for n, m in masks.items()}


class MaskKeeper:
    """Training callback: re-zeros pruned weights after every optimizer step, since momentum and weight decay revive them.

    The optimizer is out of reach of a callback, so momentum buffers of pruned weights are not cleared; re-zeroing
    after each step keeps those weights exactly zero regardless, and the loop builds a fresh optimizer per training.
    """

    def __init__(self, masks: Masks):
        self.masks = masks

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        apply_masks_(model, self.masks)

    def on_step_end(self, model: nn.Module) -> None:
        apply_masks_(model, self.masks)
