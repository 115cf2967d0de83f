"""Lookahead (Zhang et al. 2019; `train.lookahead_steps`, `train.lookahead_alpha`): slow weights that every k steps
move part way to the optimizer's weights, which restart from them. Dense training only: the slow weights would bring
back weights a mask removed."""
from __future__ import annotations

from slimlab.extras import ExtraContext, register_extra


class Lookahead:
    """Lookahead over the parameters: every `steps` optimizer steps the slow weights move `alpha` of the way to the
    fast (optimizer) weights, and the optimizer restarts from them. Batch-norm statistics stay live, and so do the
    optimizer's momentum buffers across each sync. `step` counts steps over the whole run, so resuming keeps the phase."""

    state_key = "lookahead"

    def __init__(self, model, steps: int, alpha: float, state: dict | None = None, step: int = 0, total_steps: int = 0):
        self.steps, self.alpha, self.step, self.total_steps = steps, alpha, step, total_steps
        self._fast = list(model.parameters())
        source = state["slow"] if state else self._fast
        self.slow = [s.detach().clone().to(p.device) for s, p in zip(source, self._fast)]

    def update(self, step: int) -> None:
        """Call after optimizer step number `step` (0-based, counted over the whole run)."""
        if (step + 1) % self.steps == 0:
            self.sync()

    def sync(self) -> None:
        import torch  # here, not at the top: listing the extras (the registry imports each file) needs no torch

        with torch.no_grad():
            torch._foreach_lerp_(self.slow, self._fast, self.alpha)
            torch._foreach_copy_(self._fast, self.slow)

    def on_step_end(self, model) -> None:
        self.update(self.step)
        self.step += 1

    def on_train_end(self, model) -> bool:
        """Finish on slow weights, as at every sync; True when that moved the weights."""
        if self.total_steps % self.steps == 0:
            return False
        self.sync()
        return True

    def state_dict(self) -> dict:
        return {"slow": self.slow}


@register_extra("lookahead", fine_tuning=False, off={"lookahead_steps": None})
def build(context: ExtraContext) -> Lookahead | None:
    """Lookahead for a config that sets lookahead_steps, resumed at the step the run resumes at."""
    cfg = context.cfg
    if cfg.lookahead_steps is None:
        return None
    return Lookahead(context.model, cfg.lookahead_steps, cfg.lookahead_alpha, context.states.get(Lookahead.state_key),
                     context.start_step, context.total_steps)
