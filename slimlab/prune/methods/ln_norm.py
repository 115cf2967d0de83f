"""Structured Ln-norm importance (`ln_structured`): a channel is as important as the Ln norm of its filter (Li et al. 2017)."""
from __future__ import annotations

import torch

from slimlab.prune.methods import PruneContext, register_method


@register_method("ln_structured", "structured")
def ln_norm(weights: dict[str, torch.Tensor], context: PruneContext) -> dict[str, torch.Tensor]:
    """Per output channel, the Ln norm of its filter divided by (filter size)^(1/n), with n = context.norm.

    Within a layer this ranks exactly as the plain Ln norm. Across layers (global scope) it compares the typical weight
    magnitude, as one global threshold does for single weights; raw norms would grow with fan-in and empty narrow layers first.
    """
    scores = {}
    for name, weight in weights.items():
        rows = weight.detach().float().cpu().reshape(weight.shape[0], -1)
        scores[name] = rows.norm(p=context.norm, dim=1) / rows.shape[1] ** (1 / context.norm)
    return scores
