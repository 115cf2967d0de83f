"""FX graph-mode torch quantization, for models not written for eager mode (plain `x + y`, torch.cat, functional relu)."""
from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx
from torch.fx import GraphModule


def prepare_graph(model: nn.Module, qconfig: QConfig, skip_names: list[str], example: torch.Tensor, qat: bool = False) -> GraphModule:
    """Trace, fuse and insert observers (or fake quantizers); returns a new GraphModule, skipped modules left in float."""
    mapping = QConfigMapping().set_global(qconfig)
    for name in skip_names:
        mapping.set_module_name(name, None)
    # torch.ao's FX mode is deprecated in favour of PT2E and says so: its warning is left to the user (engine pt2e has none).
    return (prepare_qat_fx if qat else prepare_fx)(model, mapping, (example,))


def convert_graph(model: GraphModule) -> GraphModule:
    """Replace observed patterns by int8 kernels."""
    return convert_fx(model.eval())
