"""ONNX Runtime engine: export to ONNX, static QDQ int8 quantization, and an nn.Module that runs the session."""
from __future__ import annotations

import contextlib
import copy
import io
import math
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from slimlab.errors import SlimlabError, require
from slimlab.quantize.configs import StaticConfig
from slimlab.quantize.engines import register_engine
from slimlab.quantize.layers import called_module, matches, resolve_skip

INPUT, OUTPUT = "input", "logits"
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """The float model as ONNX (TorchScript-based exporter, BN folded in eval mode, batch dimension dynamic).

    Not the current exporter (`dynamo=True`), for three reasons found with torch 2.13, onnxscript 0.7.2, onnx 1.23 and
    onnxruntime 1.32: it needs onnxscript, which this project's `onnx` extra does not install; its optimised graph
    (conv-BN folded) names each Conv `node_Conv_N` and gives it the batch norm's module scope, so `skip` and the
    per-layer table would name the wrong layers (`bn1` for `conv1`); and its unoptimised graph makes ORT's
    `quant_pre_process` fail (AttributeError in onnx.numpy_helper). The legacy exporter's deprecation warning is left
    visible: this path is one PyTorch is retiring.

    Two things it cannot export are rewritten on a copy first: adaptive average pooling to a size that does not divide
    the input (VGG and AlexNet pool 1x1 or 2x2 maps to 7x7), as the same averages written as two matrix products for
    the exported input size; and the fused multi-head-attention kernel, by switching MHA's fast path off (its
    composite path exports). What still fails is one line naming the operation."""
    model = exportable_copy(model.cpu().eval(), example.cpu())
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), _mha_fastpath(False):
            torch.onnx.export(model, (example.cpu(),), buffer, dynamo=False, opset_version=17, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    except Exception as exc:  # noqa: BLE001  (the exporter raises many types, with the whole graph in the message)
        raise SlimlabError(f"onnxruntime: the ONNX export of {type(model).__name__} failed: {type(exc).__name__}: "
                           f"{(str(exc).strip().splitlines() or [''])[0][:200]}") from None
    return buffer.getvalue()


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


class PoolAsMatmul(nn.Module):
    """Adaptive average pooling from a fixed (H, W) to (h, w) as rows @ x @ cols: the same averages, exported as one
    Einsum, which ORT's quantizer leaves in float (a MatMul would get int8 averaging weights)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor):
        super().__init__()
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ih,nchw,wj->ncij", self.rows, x, self.cols)


def _averaging(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): row i averages input cells floor(i*in/out) .. ceil((i+1)*in/out) - 1, as torch does."""
    matrix = torch.zeros(size_out, size_in)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def exportable_copy(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """`model`, or a copy whose adaptive average pools that the exporter refuses are PoolAsMatmul modules."""
    seen: dict[str, tuple[int, ...]] = {}
    pools = {n: m for n, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    hooks = [m.register_forward_hook(lambda _m, i, _o, n=n: seen.update({n: tuple(i[0].shape[-2:])}) and None)
             for n, m in pools.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    awkward = {}
    for name, (h, w) in seen.items():
        size = pools[name].output_size
        oh, ow = (size, size) if isinstance(size, int) else (size[0] or h, size[1] or w)
        if h % oh or w % ow:
            awkward[name] = PoolAsMatmul(_averaging(h, oh), _averaging(w, ow).T)
    if not awkward:
        return model
    model = copy.deepcopy(model)
    for name, replacement in awkward.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, replacement)
    return model


def module_of(node_name: str) -> str:
    """The torch module an exported node came from: '/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1',
    '/features/features.1/features.1.0/mlp/mlp.0/Gemm' -> 'features.1.0.mlp.0': a top container's child is scoped by
    its whole dotted name, a nested container's child by the container's own name and its index, any other module by
    its attribute name."""
    path = previous = ""
    for scope in node_name.split("/")[1:-1]:
        if not path or scope.startswith(path + "."):  # the whole dotted name ('features.1.0' under 'features.1')
            path = scope
        elif previous and scope.startswith(previous + "."):  # a nested container's child ('mlp.0' under 'mlp')
            path = f"{path}.{scope[len(previous) + 1:]}"
        else:
            path = f"{path}.{scope}"
        previous = scope
    return path


def _constant_size(sizes: dict, producers: dict, name: str) -> int:
    """Elements of the constant tensor `name` comes from through value-preserving ops (a dequantize, a transpose), or 0
    when it is computed from the input. `sizes`: the initializers' element counts; `producers`: each output's node."""
    for _ in range(8):
        if name in sizes:
            return sizes[name]
        node = producers.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "Transpose", "Identity", "Cast", "Reshape", "Constant"):
            return 0
        if node.op_type == "Constant":
            return math.prod(node.attribute[0].t.dims) if node.attribute and node.attribute[0].t.dims else 1
        name = node.input[0]
    return 0


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session behind nn.Module's call; its intra-op threads follow torch.get_num_threads()."""

    def __init__(self, onnx_bytes: bytes):
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self._sessions: dict[int, object] = {}

    def _session(self, threads: int):
        if threads not in self._sessions:  # thread count is fixed per session, so keep one per count
            ort = require("onnxruntime", "onnx", "ONNX Runtime inference")
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self._sessions[threads] = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self._session(torch.get_num_threads()).run([OUTPUT], {INPUT: array})[0])

    def __deepcopy__(self, memo) -> "OnnxRuntimeModule":
        return OnnxRuntimeModule(self.onnx_bytes)  # sessions cannot be copied; a new one is built on first call

    def deployable(self, example: torch.Tensor) -> tuple[bytes, str]:
        """The quantized ONNX file: what a deployment loads, and what the model size counts."""
        return self.onnx_bytes, "onnx"

    def layer_rows(self) -> list[dict]:
        """One row per weighted ONNX node: its torch module, op type, and int8 if its weight passes a DequantizeLinear."""
        onnx = require("onnx", "onnx", "ONNX model inspection")
        graph = onnx.load_from_string(self.onnx_bytes).graph
        dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
        producers = {out: n for n in graph.node for out in n.output}
        rows = []
        for node in (n for n in graph.node if n.op_type in WEIGHTED_OPS):
            weights = _constant_size(sizes, producers, node.input[1])
            if weights:  # a MatMul of two activations (attention scores) has no weight: no layer
                rows.append({"name": module_of(node.name), "type": node.op_type, "weights": weights,
                             "weight_dtype": "int8" if node.input[1] in dequantized else "float32"})
        return rows


def uniform_batches(batches: Sequence[torch.Tensor]):
    """The calibration batches, all of one size: ORT stacks its per-batch outputs, so a short last batch (a calibration
    split that is not a multiple of the batch) broke it. Batches of mixed sizes are cut into pieces of their greatest
    common divisor, so every image is still seen; one batch at a time, never all at once."""
    size = math.gcd(*(x.shape[0] for x in batches)) if batches else 0
    for x in batches:
        yield from (x,) if x.shape[0] == size else torch.split(x, size)


@register_engine("onnxruntime")
def quantize_onnxruntime(model: nn.Module, config: StaticConfig, calibration_batches: Sequence[torch.Tensor],
                         example: torch.Tensor | None = None) -> OnnxRuntimeModule:
    """Static QDQ int8 for ONNX Runtime (uint8 activations, int8 weights); the ONNX bytes are on `.onnx_bytes`."""
    onnx = require("onnx", "onnx", "ONNX Runtime quantization")
    require("onnxruntime", "onnx", "ONNX Runtime quantization")
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        """One batch at a time, converted when ORT asks for it (a list of them all held every batch twice)."""

        def __init__(self):
            self.feeds = ({INPUT: x.cpu().float().contiguous().numpy()} for x in uniform_batches(calibration_batches))

        def get_next(self):
            return next(self.feeds, None)

    float_model = onnx.load_from_string(export_onnx(model, calibration_batches[0][:1] if example is None else example))
    skipped = resolve_skip(model, config.skip)
    modules = {name for name, _ in model.named_modules()}
    excluded = [n.name for n in float_model.graph.node if skipped and matches(called_module(module_of(n.name), modules), skipped)]
    # Entropy is ORT's range search over a histogram, the counterpart of torch's HistogramObserver.
    method = {"minmax": CalibrationMethod.MinMax, "moving_average": CalibrationMethod.MinMax,
              "histogram": CalibrationMethod.Entropy}[config.observer]
    with tempfile.TemporaryDirectory(prefix="slimlab-ort-") as folder:  # ORT writes its result to a path
        prepared, output = Path(folder) / "prepared.onnx", Path(folder) / "quantized.onnx"
        # ORT's recommended pre-pass: shape inference and graph clean-up (shared constants the exporter routes through
        # Identity nodes would otherwise keep their convolutions' biases float and block the integer kernels).
        # ORT's symbolic shape inference gives up on attention reshapes (ViT, Swin); ONNX's own does not. Where it gives
        # up it dumps the model into the working folder, so it runs inside the temporary folder (a chdir for the call).
        with contextlib.chdir(folder):
            try:
                quant_pre_process(float_model, prepared)
            except Exception:  # noqa: BLE001  (it raises a bare Exception)
                quant_pre_process(float_model, prepared, skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the entropy calibrator prints progress
            quantize_static(prepared, output, Batches(), quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                            nodes_to_exclude=excluded, extra_options={"CalibMovingAverage": config.observer == "moving_average"})
        return OnnxRuntimeModule(output.read_bytes())
