"""First-order Taylor pruning (`taylor`): a weight matters as much as removing it would change the loss, |w * dL/dw|.

Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning" (CVPR; docs/references.md): the loss change
from zeroing a weight is, to first order, g*w. Its magnitude per minibatch, averaged over a few minibatches, sees what
magnitude cannot: a large weight the loss does not depend on (a zero gradient) can go before a small one it does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimlab.errors import ConfigError
from slimlab.prune.methods import PruneContext, register_method


@register_method("taylor", "unstructured", needs_batches=True)
def taylor(weights: dict[str, torch.Tensor], context: PruneContext) -> dict[str, torch.Tensor]:
    """|w * dL/dw| per training batch, averaged over the context's gradient batches (at most max_batches)."""
    if context.model is None or context.batches is None:
        raise ConfigError("method 'taylor' needs gradient batches: pass batches=[(inputs, targets), ...]")
    model, loss_fn = context.model, context.loss or F.cross_entropy
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ConfigError(f"method 'taylor': {unknown[0]!r} is not a parameter of the model the context names")
    totals = {name: torch.zeros_like(weight, dtype=torch.float32) for name, weight in weights.items()}
    # Scoring must leave the model as it found it: eval mode (no batch-norm statistics update, no dropout), gradients
    # of a training step that is in progress (gradual pruning scores between steps) put back afterwards.
    modes = {module: module.training for module in model.modules()}
    saved_grads = {name: p.grad for name, p in params.items()}
    count = 0
    try:
        model.eval()
        with torch.enable_grad():
            for inputs, targets in context.gradient_batches():
                for p in params.values():
                    p.grad = None
                loss_fn(model(inputs), targets).backward()
                for name, weight in weights.items():
                    grad = params[name].grad
                    if grad is not None:
                        totals[name] += (weight.detach().float() * grad.float()).abs()
                count += 1
    finally:
        for module, mode in modes.items():
            module.train(mode)
        for name, p in params.items():
            p.grad = saved_grads[name]
    if count == 0:
        raise ConfigError("method 'taylor': the gradient batches are empty; give it at least one (inputs, targets) batch")
    return {name: total / count for name, total in totals.items()}
