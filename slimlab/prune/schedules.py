"""When to prune how much: one-shot, iterative rounds (per-round rate 1-(1-p)^(1/k)), Zhu & Gupta's gradual cubic schedule."""
from __future__ import annotations

from typing import Callable

from torch import nn

from slimlab.errors import ConfigError
from slimlab.prune.unstructured import Masks, apply_masks_, mask_sparsity


def per_round_rate(target: float, rounds: int) -> float:
    """Fraction of the surviving weights to prune in each of `rounds` rounds so that `target` is reached after the last."""
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    if not 0 <= target < 1:
        raise ConfigError(f"target sparsity must be in [0, 1), got {target}")
    return 1 - (1 - target) ** (1 / rounds)


def iterative_targets(target: float, rounds: int) -> list[float]:
    """Overall sparsity after each round; one-shot is rounds=1."""
    rate = per_round_rate(target, rounds)
    return [1 - (1 - rate) ** r for r in range(1, rounds)] + [target]


def amount_to_reach(current: float, target: float) -> float:
    """Fraction of the survivors to prune to go from `current` to `target` overall sparsity."""
    if target <= current:
        return 0.0
    return 1 - (1 - target) / (1 - current)


def cubic_sparsity(step: int, final: float, initial: float = 0.0, start_step: int = 0, interval: int = 1, events: int = 1) -> float:
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, held at s_i before t0 and at s_f after t0 + n dt."""
    span = max(1, interval * events)
    progress = min(1.0, max(0.0, (step - start_step) / span))
    return final + (initial - final) * (1 - progress) ** 3


PruneFn = Callable[[nn.Module, float, Masks | None], Masks]  # (model, amount of survivors, masks) -> masks


class GradualPruning:
    """Training callback: prunes at t0 + j*dt (j = 1..n) to the cubic schedule's sparsity and keeps masks in between."""

    def __init__(self, prune: PruneFn, final: float, interval: int, events: int, initial: float = 0.0, start_step: int = 0,
                 masks: Masks | None = None):
        if interval < 1 or events < 1:
            raise ConfigError(f"gradual pruning needs interval >= 1 and events >= 1 (got {interval}, {events})")
        self.prune, self.final, self.initial = prune, final, initial
        self.interval, self.events, self.start_step = interval, events, start_step
        self.masks = masks
        self.step = 0
        self.sparsity_log: list[tuple[int, float]] = []  # (optimizer step, overall sparsity reached)

    state_key = "gradual_pruning"  # its state rides in the training checkpoint: a resumed phase prunes on schedule

    def state_dict(self) -> dict:
        return {"step": self.step, "masks": self.masks, "sparsity_log": [list(x) for x in self.sparsity_log]}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.masks = state["step"], state["masks"]
        self.sparsity_log = [tuple(x) for x in state["sparsity_log"]]

    def on_step_end(self, model: nn.Module) -> None:
        self.step += 1
        since = self.step - self.start_step
        if since > 0 and since % self.interval == 0 and since // self.interval <= self.events:
            target = cubic_sparsity(self.step, self.final, self.initial, self.start_step, self.interval, self.events)
            current = mask_sparsity(self.masks) if self.masks else 0.0
            self.masks = self.prune(model, amount_to_reach(current, target), self.masks)
            self.sparsity_log.append((self.step, mask_sparsity(self.masks)))
        elif self.masks is not None:
            apply_masks_(model, self.masks)
