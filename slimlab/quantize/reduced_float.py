"""Reduced-precision float inference (fp16, bf16): the weights cast, inputs cast in and outputs cast back to fp32."""
from __future__ import annotations

import copy

import torch
from torch import nn

from slimlab.errors import ConfigError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class ReducedFloat(nn.Module):
    """Runs `module` in `dtype` behind an fp32 interface, so evaluation and timing code need no change."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


def to_reduced_float(model: nn.Module, dtype: torch.dtype | str) -> ReducedFloat:
    """A copy of the model with its weights cast to fp16/bf16, wrapped to take and return fp32 tensors."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise ConfigError(f"reduced float dtype must be fp16 or bf16, not {dtype}")
    return ReducedFloat(copy.deepcopy(model).eval(), dtype)
