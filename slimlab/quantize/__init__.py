"""Quantization: one verb per method on a plain nn.Module, engines behind a registry (slimlab/quantize/engines.py),
the `quantize` experiment step (registered by slimlab/quantize/step.py)."""
from __future__ import annotations

from slimlab.lazy import lazy_api

# The public API: each name and the module that defines it.
_API = {
    "DynamicConfig": "slimlab.quantize.configs",
    "QATConfig": "slimlab.quantize.configs",
    "StaticConfig": "slimlab.quantize.configs",
    "quantize_dynamic_": "slimlab.quantize.dynamic",
    "engine_names": "slimlab.quantize.engines",
    "get_engine": "slimlab.quantize.engines",
    "register_engine": "slimlab.quantize.engines",
    "compare_logits": "slimlab.quantize.error",
    "layer_table": "slimlab.quantize.error",
    "logit_error": "slimlab.quantize.error",
    "OnnxRuntimeModule": "slimlab.quantize.onnx_runtime",
    "quantize_onnxruntime": "slimlab.quantize.onnx_runtime",
    "PT2EModule": "slimlab.quantize.pt2e",
    "load_program": "slimlab.quantize.pt2e",
    "QATSchedule": "slimlab.quantize.qat",
    "convert_qat": "slimlab.quantize.qat",
    "convert_qat_": "slimlab.quantize.qat",
    "prepare_qat": "slimlab.quantize.qat",
    "prepare_qat_": "slimlab.quantize.qat",
    "to_reduced_float": "slimlab.quantize.reduced_float",
    "quantize_static": "slimlab.quantize.static",
    "quantize_static_": "slimlab.quantize.static",
    "QuantizeStepConfig": "slimlab.quantize.step_config",
    "apply_quantize": "slimlab.quantize.step",
}
__all__ = ["DynamicConfig", "QATConfig", "StaticConfig", "quantize_dynamic_", "quantize_static", "prepare_qat", "convert_qat",
           "quantize_static_", "prepare_qat_", "convert_qat_", "PT2EModule", "load_program",
           "QATSchedule", "to_reduced_float", "quantize_onnxruntime", "OnnxRuntimeModule", "register_engine", "get_engine",
           "engine_names", "compare_logits", "layer_table", "logit_error", "QuantizeStepConfig"]


__getattr__, __dir__ = lazy_api(__name__, _API)
