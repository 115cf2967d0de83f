"""Which modules a forward pass calls, and in what order: the classifier is the last weighted layer run, wherever the
model defines it, and a module never called has its weight read by its parent (torchvision's Swin attention)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def first_calls(model: nn.Module, example: torch.Tensor, types: tuple[type, ...]) -> list[str]:
    """Names of the modules of `types` that one eval-mode forward pass of `example` calls, in the order it first calls
    them. The model's training mode is left as it was."""
    modules = {name: m for name, m in model.named_modules() if isinstance(m, types)}
    called: dict[str, None] = {}
    hooks = [m.register_forward_hook(lambda *_a, n=n: called.setdefault(n)) for n, m in modules.items()]
    was_training = model.training
    try:
        model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return list(called)
