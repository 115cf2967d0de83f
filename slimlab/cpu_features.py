"""What this machine's CPU computes natively (bf16), asked by the run id and by training; imports torch, nothing of slimlab."""
from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    """oneDNN's own check for AVX512-BF16 or AMX; without them bf16 is emulated and slower than fp32."""
    import torch  # here, not at the top: config.py names this probe and stays importable without torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
