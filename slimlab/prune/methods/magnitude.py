"""Magnitude pruning (`l1`): a weight's importance is its absolute value (Han et al. 2015; the lottery-ticket papers)."""
from __future__ import annotations

import torch

from slimlab.prune.methods import PruneContext, register_method


@register_method("l1", "unstructured")
def magnitude(weights: dict[str, torch.Tensor], context: PruneContext) -> dict[str, torch.Tensor]:
    """|w|: the smallest weights go first; needs no data, so the context is unused."""
    return {name: weight.detach().abs().float() for name, weight in weights.items()}
