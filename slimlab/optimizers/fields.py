"""The optimizers' own config keys (flat `train:` keys), config classes only: `TrainConfig` names these classes as its
bases, so config.py imports this file and never an optimizer's code."""
from __future__ import annotations

from pydantic import BaseModel, Field


class MuonFields(BaseModel):
    muon_lr: float = Field(0.03, gt=0, description="muon: peak step size of each convolution weight, relative to its norm")
    muon_momentum: float = Field(0.9, ge=0, lt=1, description="muon: momentum of the convolution weights' steps")
