"""Dynamic quantization: int8 (or fp16) weights, activations quantized at run time; Linear and recurrent layers only."""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, float16_dynamic_qconfig, quantize_dynamic

from slimlab.quantize.configs import DynamicConfig
from slimlab.quantize.layers import matches, resolve_skip
from slimlab.quantize.qconfigs import pin_engine, quantized_engine

# The layer types torch has dynamic kernels for; convolutions are not among them, so a CNN stays mostly float.
DYNAMIC_LAYERS = (nn.Linear, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


def quantize_dynamic_(model: nn.Module, config: DynamicConfig) -> nn.Module:
    """Swap every supported layer not skipped for its dynamic-quantized version, in place; returns the model."""
    model = model.cpu().eval()
    skipped = resolve_skip(model, config.skip)
    qconfig = default_dynamic_qconfig if config.dtype == "int8" else float16_dynamic_qconfig
    chosen = {name: qconfig for name, m in model.named_modules()
              if isinstance(m, DYNAMIC_LAYERS) and not matches(name, skipped)}
    with quantized_engine(config.engine):  # torch.ao's deprecation warning is the user's to see
        quantize_dynamic(model, qconfig_spec=chosen, dtype=torch.qint8 if config.dtype == "int8" else torch.float16, inplace=True)
    return pin_engine(model, config.engine)
