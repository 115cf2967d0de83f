"""Random pruning: uniform scores, the baseline every other method must beat (and the lottery-ticket control's kin)."""
from __future__ import annotations

import torch

from slimlab.prune.methods import PruneContext, register_method


@register_method("random", "unstructured")
def random_scores(weights: dict[str, torch.Tensor], context: PruneContext) -> dict[str, torch.Tensor]:
    """Uniform random scores drawn from context.seed: the same seed prunes the same weights."""
    generator = torch.Generator().manual_seed(context.seed)
    return {name: torch.rand(weight.shape, generator=generator).to(weight.device) for name, weight in weights.items()}
