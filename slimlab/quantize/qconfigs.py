"""Observer and fake-quantize settings (torch QConfigs) for each engine, observer and weight granularity."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.ao.quantization import (FusedMovingAvgObsFakeQuantize, HistogramObserver, MinMaxObserver,
                                   MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                   PerChannelMinMaxObserver, QConfig)

EAGER_BACKENDS = ("x86", "fbgemm", "qnnpack")
ACTIVATION_OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver, "histogram": HistogramObserver}


def _ranges(backend: str) -> tuple[bool, int]:
    # x86/fbgemm: 7-bit activations, as torch's defaults, because AVX2 kernels sum u8*s8 pairs in int16 and would
    # saturate at 8 bits. qnnpack: full-range activations, and weights in [-127, 127] as its kernels require.
    return (True, -128) if backend != "qnnpack" else (False, -127)


def static_qconfig(backend: str, observer: str, per_channel: bool) -> QConfig:
    """Activation observer of the chosen kind (affine uint8), symmetric int8 weights per channel or per tensor."""
    reduce_range, weight_min = _ranges(backend)
    activation = ACTIVATION_OBSERVERS[observer].with_args(reduce_range=reduce_range)
    weight_observer, scheme = ((PerChannelMinMaxObserver, torch.per_channel_symmetric) if per_channel
                               else (MinMaxObserver, torch.per_tensor_symmetric))
    weight = weight_observer.with_args(dtype=torch.qint8, qscheme=scheme, quant_min=weight_min, quant_max=127)
    return QConfig(activation=activation, weight=weight)


def qat_qconfig(backend: str, per_channel: bool) -> QConfig:
    """Fake quantization with moving-average observers, matching static_qconfig's number formats."""
    reduce_range, weight_min = _ranges(backend)
    activation = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                                         reduce_range=reduce_range)
    weight_observer, scheme = ((MovingAveragePerChannelMinMaxObserver, torch.per_channel_symmetric) if per_channel
                               else (MovingAverageMinMaxObserver, torch.per_tensor_symmetric))
    weight = FusedMovingAvgObsFakeQuantize.with_args(observer=weight_observer, quant_min=weight_min, quant_max=127,
                                                     dtype=torch.qint8, qscheme=scheme)
    return QConfig(activation=activation, weight=weight)


@contextlib.contextmanager
def quantized_engine(engine: str):
    """torch.backends.quantized.engine set to `engine` inside the block and restored after it, even on error."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def pin_engine(model: nn.Module, engine: str) -> nn.Module:
    """Run `model` under the engine its int8 weights were packed for (a qnnpack model gives other numbers under x86),
    set around each forward call only; nothing to do for the engine active now."""
    if engine != torch.backends.quantized.engine:
        saved: list[str] = []

        def enter(_module, _inputs):
            saved.append(torch.backends.quantized.engine)
            torch.backends.quantized.engine = engine

        def leave(_module, _inputs, _output):
            torch.backends.quantized.engine = saved.pop()

        model.register_forward_pre_hook(enter)
        model.register_forward_hook(leave, always_call=True)
    return model
