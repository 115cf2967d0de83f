"""Eager-mode torch quantization: stubs around the model, float islands for skipped layers, observers in place."""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.quantization import DeQuantStub, QConfig, QuantStub, convert, prepare, prepare_qat

from slimlab.quantize.fusion import fuse_
from slimlab.quantize.layers import ISLAND_ATTRIBUTE
from slimlab.quantize.qconfigs import static_qconfig


class StubbedForward:
    """The model's own forward between its QuantStub and DeQuantStub; set on the instance so quantization is in place."""

    def __init__(self, model: nn.Module):
        self.model = model  # a reference cycle; deepcopy, pickle and torch.jit.trace all handle it

    def __call__(self, x, *args, **kwargs):
        out = type(self.model).forward(self.model, self.model.quant(x), *args, **kwargs)
        if isinstance(out, (tuple, list)):
            return type(out)(self.model.dequant(o) for o in out)
        return self.model.dequant(out)


class FloatIsland(nn.Module):
    """A skipped layer between a DeQuantStub and a QuantStub, so it computes in float inside an int8 model."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.dequant = DeQuantStub()
        setattr(self, ISLAND_ATTRIBUTE, layer)
        self.quant = QuantStub()
        layer.qconfig = None  # propagates to the layer's children: nothing inside is observed or converted

    def forward(self, x):
        return self.quant(getattr(self, ISLAND_ATTRIBUTE)(self.dequant(x)))


def prepare_eager_(model: nn.Module, qconfig: QConfig, skip_names: list[str], qat: bool = False) -> nn.Module:
    """Stubs, float islands and observers (or fake quantizers) in place; the model must already be fused."""
    for name in skip_names:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, FloatIsland(model.get_submodule(name)))
    model.quant, model.dequant = QuantStub(), DeQuantStub()
    model.forward = StubbedForward(model)
    model.qconfig = qconfig
    (prepare_qat if qat else prepare)(model, inplace=True)  # deprecated by torch.ao, which warns: the user should know
    return model


def convert_eager_(model: nn.Module) -> nn.Module:
    """Swap observed float modules for int8 kernels in place."""
    return convert(model.eval(), inplace=True)


def eager_ready(model: nn.Module, example: torch.Tensor, engine: str) -> bool:
    """Whether `model` runs with int8 tensors between one pair of stubs (its adds go through FloatFunctional, etc.).

    Running is not enough: a plain torch.cat of int8 tensors runs, but forces every input onto the first one's
    scale (torch only warns), which wrecks the output when the branches' ranges differ. FX handles it properly."""
    trial = copy.deepcopy(model).cpu().eval()
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        fuse_(trial)
        prepare_eager_(trial, static_qconfig(engine, "minmax", per_channel=False), [])
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trial(example)
            convert_eager_(trial)(example)
    except (RuntimeError, TypeError, AttributeError, AssertionError):
        return False  # typically "Could not run 'aten::add.out' with arguments from the 'QuantizedCPU' backend"
    finally:
        torch.backends.quantized.engine = previous
    shared_scale = [w for w in caught if "must share the same quantization parameters" in str(w.message)]
    for w in caught:  # recorded to read one warning, not to hide the others (torch.ao's deprecation notices among them)
        if w not in shared_scale:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return not shared_scale
