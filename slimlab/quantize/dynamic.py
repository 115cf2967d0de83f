"""Dynamic quantization: int8 (or fp16) weights, activations quantized at run time; Linear and recurrent layers only."""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, float16_dynamic_qconfig, quantize_dynamic

from slimlab.quantize.configs import DynamicConfig
from slimlab.quantize.layers import attention_projections, matches, resolve_skip, uncalled_layers
from slimlab.quantize.qconfigs import pin_engine, quantized_engine

# The layer types torch has dynamic kernels for; convolutions are not among them, so a CNN stays mostly float.
DYNAMIC_LAYERS = (nn.Linear, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


def quantize_dynamic_(model: nn.Module, config: DynamicConfig, example: torch.Tensor | None = None) -> nn.Module:
    """Swap every supported layer not skipped for its dynamic-quantized version, in place; returns the model.

    The output projections of nn.MultiheadAttention and the Linear layers of nn.TransformerEncoderLayer/DecoderLayer
    stay float: those modules read the weight tensors directly, and a swapped one broke them (AttributeError on ViT). Given an `example` input, so do layers whose forward never runs (their
    parent reads the weight, as Swin's attention does). Why each stays float is on `model.slimlab_float_reasons`."""
    model = model.cpu().eval()
    reasons = {n: "unsupported op (torch's attention reads this projection's weight itself)" for n in attention_projections(model)}
    if example is not None:
        reasons.update({n: "unsupported op (its parent reads the weight; the module is never called)"
                        for n in uncalled_layers(model, example.cpu(), DYNAMIC_LAYERS) if n not in reasons})
    skipped = resolve_skip(model, config.skip) + list(reasons)
    qconfig = default_dynamic_qconfig if config.dtype == "int8" else float16_dynamic_qconfig
    chosen = {name: qconfig for name, m in model.named_modules()
              if isinstance(m, DYNAMIC_LAYERS) and not matches(name, skipped)}
    with quantized_engine(config.engine):  # torch.ao's deprecation warning is the user's to see
        quantize_dynamic(model, qconfig_spec=chosen, dtype=torch.qint8 if config.dtype == "int8" else torch.float16, inplace=True)
    model = pin_engine(model, config.engine)
    model.slimlab_float_reasons = reasons
    return model
