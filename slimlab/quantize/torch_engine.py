"""The torch.ao engines (x86, fbgemm, qnnpack): eager mode where the model allows it, FX graph mode otherwise."""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.ao.quantization import QConfig
from torch.ao.quantization.quantize_fx import fuse_fx

from slimlab.errors import SlimlabError
from slimlab.quantize.configs import StaticConfig
from slimlab.quantize.eager import StubbedForward, convert_eager_, eager_ready, prepare_eager_
from slimlab.quantize.engines import register_engine
from slimlab.quantize.fusion import check_fusion, fuse_, fused_copy
from slimlab.quantize.fx import convert_graph, prepare_graph
from slimlab.quantize.layers import is_quantized_layer, resolve_skip
from slimlab.quantize.qconfigs import EAGER_BACKENDS, pin_engine, quantized_engine, static_qconfig

ENGINE_ATTRIBUTE = "quantized_engine"  # on a prepared model: the engine its int8 weights are to be packed for


def prepare_torch_(model: nn.Module, qconfig: QConfig, skip: Iterable[str], example: torch.Tensor, engine: str,
                   mode: str = "auto", qat: bool = False) -> nn.Module:
    """Fuse and insert observers (fake quantizers if `qat`): in place in eager mode, a new GraphModule in FX mode."""
    if graph_mode(model) == "eager" or any(is_quantized_layer(m) for m in model.modules()):
        raise SlimlabError(f"{type(model).__name__} is already quantized or prepared; pass the float model")
    model = model.cpu().train(qat)
    skip_names = resolve_skip(model, skip)
    with quantized_engine(engine):
        if mode == "fx" or (mode == "auto" and not eager_ready(model, example.cpu(), engine)):
            prepared = prepare_graph(model, qconfig, skip_names, example.cpu(), qat)
        else:
            check_fusion(model, example.cpu(), skip_names)
            fuse_(model, qat=qat)
            prepared = prepare_eager_(model, qconfig, skip_names, qat)
    setattr(prepared, ENGINE_ATTRIBUTE, engine)  # packed int8 weights are laid out for the engine active at conversion
    return prepared


def convert_torch_(model: nn.Module) -> nn.Module:
    """Observed or fake-quantized model -> int8 kernels (eager: the same object), run under its engine."""
    model = model.cpu().eval()
    engine = getattr(model, ENGINE_ATTRIBUTE, torch.backends.quantized.engine)
    with quantized_engine(engine):
        converted = convert_eager_(model) if graph_mode(model) == "eager" else convert_graph(model)
    return pin_engine(converted, engine)


def graph_mode(model: nn.Module) -> str:
    """'eager' for a model quantized in place between stubs, 'fx' for a GraphModule from graph mode."""
    return "eager" if isinstance(vars(model).get("forward"), StubbedForward) else "fx"


def float_reference(float_model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A fused float copy whose module names match `quantized`'s, for the per-layer error table."""
    if graph_mode(quantized) == "eager":
        return fused_copy(float_model)
    return fuse_fx(copy.deepcopy(float_model).cpu().eval())


@torch.no_grad()
def calibrate(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Run the calibration batches through the observers."""
    model.eval()
    for x in batches:
        model(x.cpu())


@register_engine(*EAGER_BACKENDS)
def quantize_torch_static(model: nn.Module, config: StaticConfig, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """Static int8 PTQ with torch.ao kernels for the engine named in `config`; the input model is not changed."""
    model = copy.deepcopy(model)
    qconfig = static_qconfig(config.engine, config.observer, config.per_channel)
    prepared = prepare_torch_(model, qconfig, config.skip, calibration[0][:1], config.engine, config.mode)
    calibrate(prepared, calibration)
    return runs_or_refuse(convert_torch_(prepared), calibration[0][:1], config.engine, type(model).__name__)


@torch.no_grad()
def runs_or_refuse(quantized: nn.Module, example: torch.Tensor, engine: str, name: str = "the model") -> nn.Module:
    """The converted model, after one forward pass: torch.ao can convert graphs its kernels then cannot run (a mean
    over a 1x1 quantized channels-last map in MNASNet and ShuffleNetV2), which must be one line here, not a traceback
    at measuring time."""
    try:
        quantized(example.cpu())
    except Exception as exc:  # noqa: BLE001  (a kernel's refusal comes as any error type)
        raise SlimlabError(f"{engine}: the converted int8 model of {name} does not run: "
                           f"{(str(exc).strip().splitlines() or [''])[0][:160]}; try engine pt2e or onnxruntime") from None
    return quantized
