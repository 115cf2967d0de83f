"""The training extras' config keys (flat `train:` keys), config classes only: `TrainConfig` names these classes as its
bases, so config.py imports this file and never an extra's code (which may import torch or slimlab.train freely)."""
from __future__ import annotations

from pydantic import BaseModel, Field


class LookaheadFields(BaseModel):
    lookahead_steps: int | None = Field(None, ge=2, description="Lookahead (Zhang et al. 2019): every k steps pull a slow "
                                        "copy of the weights toward the SGD weights and restart SGD from it")
    lookahead_alpha: float = Field(0.5, gt=0, le=1, description="Lookahead: the fraction of the way the slow weights move")


class WeightAverageFields(BaseModel):
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the weights "
                                    "(per step) and finish with it; dense training only")
