"""Weight average (`train.ema_decay`): an exponential moving average of the weights, updated every optimizer step;
training finishes on it. Dense training only: the average would bring back weights a mask removed."""
from __future__ import annotations

from slimlab.extras import ExtraContext, register_extra


class WeightAverage:
    """Exponential moving average of a model's floating-point weights and buffers, updated every optimizer step.

    The decay ramps up as (1 + t) / (10 + t) so early updates are not dominated by the initial weights; integer
    buffers (batch-norm counters) are copied as they are."""

    state_key = "ema"  # the checkpoint's name for this state, as runs from before issue 19 saved it

    def __init__(self, model, decay: float, state: dict | None = None):
        self.decay = decay
        live = model.state_dict()
        source = state["average"] if state else live
        self.average = {k: source[k].detach().clone().to(v.device) for k, v in live.items()}
        self.updates = state["updates"] if state else 0
        self._float_keys = [k for k, v in live.items() if v.dtype.is_floating_point]
        self._live = [live[k] for k in self._float_keys]
        self._shadow = [self.average[k] for k in self._float_keys]
        self._other = [(self.average[k], v) for k, v in live.items() if not v.dtype.is_floating_point]

    def update(self) -> None:
        import torch  # here, not at the top: listing the extras (the registry imports each file) needs no torch

        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._shadow, self._live, 1 - decay)
            for shadow, live in self._other:
                shadow.copy_(live)

    def on_step_end(self, model) -> None:
        self.update()

    def on_train_end(self, model) -> bool:
        """Finish with the averaged weights; the last checkpoint keeps the raw ones beside them."""
        model.load_state_dict(self.average)
        return True

    def state_dict(self) -> dict:
        return {"average": self.average, "updates": self.updates}


@register_extra("weight_average", fine_tuning=False, off={"ema_decay": None}, observes=True)
def build(context: ExtraContext) -> WeightAverage | None:
    """The average of the weights after every other callback's step (it observes, it does not act)."""
    if context.cfg.ema_decay is None:
        return None
    return WeightAverage(context.model, context.cfg.ema_decay, context.states.get(WeightAverage.state_key))
