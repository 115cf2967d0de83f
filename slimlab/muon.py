"""Muon (Jordan et al. 2024): momentum SGD whose update for each convolution filter bank is orthogonalized.

For a convolution weight the momentum-averaged gradient is reshaped to a matrix (out x in*k*k) and replaced by the
nearest semi-orthogonal matrix, computed with a few Newton-Schulz iterations. Every direction in the filter bank then
moves at the same rate, which speeds up short training runs (the CIFAR-10 speed records since late 2024 use it).

A weight whose training-mode output does not depend on its scale (a convolution feeding a batch norm) has its norm
pinned to sqrt(out_channels) before each step: `lr` is then the step's size relative to the weight and no weight
decay is needed. `scale_invariant_parameters` finds such weights by measuring, not by trusting layer order. Other
convolution weights are orthogonalized with plain weight decay. Every other parameter (batch-norm affine parameters,
biases, the classifier) takes a Nesterov SGD step with the group's own learning rate.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

# Quintic iteration coefficients tuned by Jordan (2024) to push all singular values to about 1 within 5 steps.
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T for matrix = U S V^T: singular values land near 1 (roughly 0.7 to 1.2), not exactly.
    A 3-D input is a stack of matrices, each handled on its own."""
    a, b, c = _NS_COEFFICIENTS
    x = matrix / (matrix.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm at most 1: the iteration converges
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


@torch.no_grad()
def scale_invariant_parameters(model: nn.Module, example: torch.Tensor, tolerance: float = 1e-3) -> set[nn.Parameter]:
    """The convolution weights whose doubling leaves the training-mode output unchanged (they feed a batch norm).

    Runs on a copy, so the model's batch-norm statistics and random state are untouched."""
    probe = copy.deepcopy(model).train()
    by_name = dict(model.named_parameters())

    # manual_seed reseeds every device; forking the example's device too leaves the caller's random streams as they were.
    devices = [example.device.index or 0] if example.device.type == "cuda" else []

    def forward() -> torch.Tensor:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)  # the same dropout masks, if any, for both passes
            return probe(example).float()

    reference = forward()
    scale = reference.abs().max().clamp_min(1e-6)
    invariant = set()
    for name, param in probe.named_parameters():
        if param.ndim != 4 or not param.requires_grad:
            continue
        param.mul_(2)
        changed = (forward() - reference).abs().max() / scale
        param.div_(2)
        if changed <= tolerance:
            invariant.add(by_name[name])
    return invariant


class Muon(torch.optim.Optimizer):
    """Param groups with `orthogonalize: True` take Muon steps; the rest take Nesterov (or heavy-ball) SGD steps.

    A group's `pin_norm: True` pins each weight's norm to sqrt(rows) before the step (for scale-invariant weights).
    The state dict has the same layout as torch's SGD (one momentum buffer per parameter), so resuming works."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool = True, weight_decay: float = 0.0):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, orthogonalize=False, pin_norm=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            same_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] and not group["pin_norm"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                buffer = state["momentum_buffer"]
                direction = grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                if group["orthogonalize"]:
                    same_shape.setdefault(p.shape, []).append((p, direction))
                else:
                    p.add_(direction, alpha=-group["lr"])
            # Weights of one shape are orthogonalized as one stack: a few batched matmuls instead of many small ones.
            for shape, pairs in same_shape.items():
                weights = [p for p, _ in pairs]
                stack = torch.stack([d.reshape(shape[0], -1).float() for _, d in pairs])
                if group["pin_norm"]:
                    norms = torch.stack([w.norm() for w in weights]).clamp_min(1e-12)
                    torch._foreach_mul_(weights, list((math.sqrt(shape[0]) / norms).unbind()))
                updates = orthogonalize(stack).unbind()
                torch._foreach_add_(weights, [u.view(shape).to(w.dtype) for u, w in zip(updates, weights)], alpha=-group["lr"])
        return loss
