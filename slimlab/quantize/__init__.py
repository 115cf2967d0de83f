"""Quantization: one verb per method on a plain nn.Module, engines behind a registry, the `quantize` experiment step."""
from slimlab.quantize import auto, onnx_runtime, pt2e, torch_engine  # noqa: F401  (engines register themselves)
from slimlab.quantize.configs import DynamicConfig, QATConfig, StaticConfig
from slimlab.quantize.dynamic import quantize_dynamic_
from slimlab.quantize.engines import engine_names, get_engine, register_engine
from slimlab.quantize.error import compare_logits, layer_table, logit_error
from slimlab.quantize.onnx_runtime import OnnxRuntimeModule, quantize_onnxruntime
from slimlab.quantize.pt2e import PT2EModule, load_program
from slimlab.quantize.qat import QATSchedule, convert_qat, convert_qat_, prepare_qat, prepare_qat_
from slimlab.quantize.reduced_float import to_reduced_float
from slimlab.quantize.static import quantize_static, quantize_static_
from slimlab.quantize.step import QuantizeStepConfig, apply_quantize
from slimlab.steps import register_step

register_step("quantize", QuantizeStepConfig)(apply_quantize)

__all__ = ["DynamicConfig", "QATConfig", "StaticConfig", "quantize_dynamic_", "quantize_static", "prepare_qat", "convert_qat",
           "quantize_static_", "prepare_qat_", "convert_qat_", "PT2EModule", "load_program",
           "QATSchedule", "to_reduced_float", "quantize_onnxruntime", "OnnxRuntimeModule", "register_engine", "get_engine",
           "engine_names", "compare_logits", "layer_table", "logit_error", "QuantizeStepConfig"]
