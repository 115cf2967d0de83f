"""The `quantize` step of an experiment: one method applied to the trained model, its error and layers reported."""
from __future__ import annotations

import copy
import json
import time
from collections import Counter
from itertools import islice
from typing import TYPE_CHECKING

import torch
from torch import nn

from slimlab.config import TrainConfig
from slimlab.prune.unstructured import MaskKeeper
from slimlab.quantize import coverage
from slimlab.quantize.configs import DynamicConfig, QATConfig
from slimlab.quantize.dynamic import quantize_dynamic_
from slimlab.quantize.error import compare_logits, layer_table
from slimlab.quantize.layers import layer_rows
from slimlab.quantize.pt2e import PT2EModule, Lowered
from slimlab.quantize.qat import QATSchedule, calibrate_observers_, convert_qat, prepare_qat
from slimlab.quantize.reduced_float import to_reduced_float
from slimlab.quantize.static import quantize_static
from slimlab.quantize.step_config import QuantizeStepConfig
from slimlab.quantize.torch_engine import float_reference, graph_mode, runs_or_refuse
from slimlab.steps import register_step
from slimlab.train import fine_tuning_overrides, peak_rates, train

if TYPE_CHECKING:
    from slimlab.steps import StepContext

CPU = torch.device("cpu")


@register_step("quantize", QuantizeStepConfig)
def apply_quantize(model: nn.Module, cfg: QuantizeStepConfig, context: StepContext) -> nn.Module:
    """Quantize the trained model (on the CPU), then report its error against the float model and its layers."""
    started = time.perf_counter()
    float_model = copy.deepcopy(model).to(CPU).eval()
    model = model.to(CPU).eval()
    calibration = _calibration(cfg, context) if cfg.method not in ("dynamic", "fp16", "bf16") else []
    qat_history: list[dict] = []
    if cfg.method == "dynamic":
        example = _calibration(cfg.model_copy(update={"calibration_batches": 1}), context)[0]
        model = quantize_dynamic_(model, DynamicConfig(dtype=cfg.dynamic_dtype, engine=cfg.engine, skip=tuple(cfg.skip)), example)
    elif cfg.method in ("fp16", "bf16"):
        model = to_reduced_float(model, cfg.method)
    elif cfg.method == "qat":
        model, qat_history = _quantization_aware_training(model, cfg, context, calibration)
    else:
        model = quantize_static(model, cfg.static_config(tuple(context.config.measure.batch_sizes)), calibration)
    seconds = time.perf_counter() - started

    # int8 kernels (torch.ao, ONNX Runtime) run on the CPU only; reduced floats are timed there too, as the baseline.
    context.measure_device = CPU
    if hasattr(model, "deployable"):
        context.serialize = lambda m, example: m.deployable(example)
    _report(float_model, model, cfg, context, calibration, seconds, qat_history)
    if getattr(model, "engine_selection", None):
        context.notes["quant_engine_auto"] = _describe_selection(model.engine_selection)
        context.notes["quant_engine_candidates"] = model.engine_selection
    _float_baselines(float_model, context)
    return model


def _float_baselines(float_model: nn.Module, context: StepContext) -> None:
    """Latency of the float model as it would be deployed without quantization: eager, and compiled (torch.compile with
    inductor freezing), at each of measure.batch_sizes; the run's speedups name each (speedup_bN_vs_float_eager, ...)."""
    cfg = context.config.measure
    if not cfg.latency or not context.time_latency:
        context.notes["float_baselines"] = "not timed: " + ("measure.latency is off" if not cfg.latency else
                                                            "other runs execute beside this one, and steps time nothing then")
        return
    from slimlab.measure import default_threads, measure_latency

    threads = cfg.threads or default_threads()
    variants = {"eager": float_model, "compiled": Lowered(copy.deepcopy(float_model))}
    disturbed = []
    for name, model in variants.items():
        for batch in cfg.batch_sizes:
            lat = measure_latency(model, context.example(batch, CPU), cfg.warmup, cfg.repeats, threads)
            key = f"float_{name}_latency_b{batch}_median_ms"
            context.metrics[key] = lat["median_ms"]
            if lat.get("disturbed"):  # the same check as every latency: a baseline timed under load is flagged, and so
                disturbed.append(f"{key}: {lat['disturbed']}")  # is every speed-up computed from it (run.py)
                context.notes.setdefault("latency_flagged", []).append(key)
    if disturbed:
        context.notes["float_baselines_noisy"] = "; ".join(disturbed)
    context.notes["float_baselines"] = (f"float_eager_latency_bN_median_ms: the float model in eager PyTorch; "
                                        f"float_compiled_latency_bN_median_ms: torch.compile with inductor freezing; "
                                        f"on the CPU, {threads} threads, median of {cfg.repeats}")


def _describe_selection(selection: dict) -> str:
    parts = [f"{name}: sqnr {c['sqnr_db']:.1f} dB, " + (f"{c['int8_fraction']:.0%} of weights int8, " if "int8_fraction" in c else "")
             + ", ".join(f"b{b} {ms:.2f} ms" for b, ms in c["latency_ms"].items()) for name, c in selection["candidates"].items()]
    return (f"engine auto chose {selection['chosen']}: the fastest (worst ratio to the fastest at any batch size) of the "
            f"engines within {selection['tolerance_db']} dB of the best logit SQNR on the calibration images among the "
            "engines that quantized the most weights; " + "; ".join(parts))


def _calibration(cfg: QuantizeStepConfig, context: StepContext) -> list[torch.Tensor]:
    loader = context.calibration_loader(cfg.calibration_batch_size)  # validation (or training) images, never test
    return [x.to(CPU) for x, _ in islice(loader, cfg.calibration_batches)]


def _quantization_aware_training(model: nn.Module, cfg: QuantizeStepConfig, context: StepContext,
                                 calibration: list[torch.Tensor]) -> tuple[nn.Module, list[dict]]:
    model = prepare_qat(model, QATConfig(engine=cfg.engine, per_channel=cfg.per_channel, skip=tuple(cfg.skip), mode=cfg.mode),
                        calibration[0][:1])
    calibrate_observers_(model, calibration)
    base = context.config.train
    # Fine-tuning, not training: a small peak rate decaying to zero, no warm-up; fake quantization runs in fp32.
    train_cfg = TrainConfig.model_validate({**base.model_dump(), "epochs": cfg.qat_epochs, **peak_rates(base, cfg.qat_lr), "warmup_epochs": 0.0,
                                            "schedule": "cosine", "final_lr_fraction": 0.0, "amp": False, "cpu_bf16": False,
                                            **fine_tuning_overrides(base),  # no averaging of fake-quant observers
                                            # QAT ends training, so it ends on uncropped images as the float model did
                                            "uncropped_final_epochs": min(base.uncropped_final_epochs, cfg.qat_epochs)})
    val = context.calibration_loader(context.config.measure.eval_batch_size) if len(context.data.val) else None
    # Weights an earlier prune step zeroed stay zero: without this, momentum and weight decay would revive them.
    # (A trained weight is never exactly zero by chance, so the zeros are the masks.)
    pruned = {name: p != 0 for name, p in model.named_parameters() if p.dim() > 1 and not p.all()}
    callbacks = [QATSchedule(cfg.freeze_bn_epoch, cfg.freeze_observer_epoch)] + ([MaskKeeper(pruned)] if pruned else [])
    history = train(model.to(context.data.device), context.train_loader(), train_cfg, val_loader=val, progress=context.progress,
                    callbacks=callbacks, desc="qat", **context.resumable("qat"))
    return runs_or_refuse(convert_qat(model), calibration[0][:1], cfg.engine, context.config.model.name), history


def _layer_rows(float_model: nn.Module, model: nn.Module, cfg: QuantizeStepConfig, context: StepContext) -> list[dict]:
    batches = [x for x, _ in islice(context.test_loader(batch_size=64, device=CPU, shuffle=True), cfg.layer_table_batches)]
    if hasattr(model, "layer_table"):  # a PT2E program compares its own graph with its float reference
        return model.layer_table(batches)
    if hasattr(model, "layer_rows"):  # a foreign runtime lists its own layers; no per-layer SQNR there
        return model.layer_rows()
    if cfg.method in ("fp16", "bf16"):
        return layer_rows(model.module)
    reference = float_model if cfg.method == "dynamic" else float_reference(float_model, model)
    return layer_table(reference, model, batches)


def _describe(cfg: QuantizeStepConfig, model: nn.Module, calibration: list[torch.Tensor], source: str) -> str:
    images = sum(len(x) for x in calibration)
    if cfg.method in ("fp16", "bf16"):
        return f"{cfg.method}: weights and activations cast to {cfg.method}, fp32 inputs and outputs"
    if cfg.method == "dynamic":
        return f"dynamic {cfg.dynamic_dtype}: weights quantized ahead of time, activations at run time, torch {cfg.engine} kernels"
    numbers = f"{'per-channel' if cfg.per_channel else 'per-tensor'} int8 weights, uint8 activations"
    calibrated = f"calibrated on {images} {source} images"
    if isinstance(model, PT2EModule):
        kind = f"QAT ({cfg.qat_epochs} epochs, lr {cfg.qat_lr})" if cfg.method == "qat" else f"static PTQ ({cfg.observer} observer)"
        return (f"{kind} through PT2E (torchao X86InductorQuantizer: torch.export, BN folded), lowered by torch.compile "
                f"with inductor freezing, {numbers}, {calibrated}")
    if cfg.method not in ("static", "qat") or hasattr(model, "onnx_bytes"):  # onnxruntime, as a method or chosen by auto
        return f"static QDQ int8 through onnxruntime ({cfg.observer} calibration), {numbers}, {calibrated}"
    how = "eager mode, conv-bn(-relu) fused" if graph_mode(model) == "eager" else "FX graph mode, conv-bn(-relu) fused"
    if graph_mode(model) == "fx" and cfg.mode == "auto":
        how += " (the model does not run in eager mode, e.g. a plain `x + y` instead of FloatFunctional)"
    kind = f"QAT ({cfg.qat_epochs} epochs, lr {cfg.qat_lr})" if cfg.method == "qat" else f"static PTQ ({cfg.observer} observer)"
    return f"{kind}, torch {cfg.engine} int8 kernels, {how}, {numbers}, {calibrated}"


def _describe_layers(rows: list[dict], method: str) -> str:
    floats = [r for r in rows if r["weight_dtype"] in ("float32", "float64")]
    listed = ", ".join(f"{r['name']} ({r['type']})" for r in floats[:12])
    listed += f" and {len(floats) - 12} more" if len(floats) > 12 else ""
    text = f"{len(rows) - len(floats)} of {len(rows)} weighted layers in reduced precision"
    if floats:
        text += f"; {len(floats)} stayed float32: {listed}"
    if method == "dynamic" and any("Conv" in r["type"] for r in floats):
        text += (". torch has dynamic kernels for Linear and recurrent layers only: the convolutions run in float, "
                 "so this is not an int8 CNN")
    return text


def _coverage(float_model: nn.Module, model: nn.Module, cfg: QuantizeStepConfig, context: StepContext) -> list[dict]:
    """The per-layer rows with why each float layer is float; refuses a quantization that left every layer float."""
    rows = coverage.per_module(_layer_rows(float_model, model, cfg, context), float_model)
    selection = getattr(model, "engine_selection", None) or {}
    engine = selection.get("chosen") or (cfg.engine if cfg.method in ("static", "qat", "dynamic") else cfg.method)
    rows = coverage.explain(rows, float_model, cfg.method, cfg.skip, getattr(model, "slimlab_sensitivity_skip", ()), engine,
                            getattr(model, "slimlab_float_reasons", None))
    coverage.refuse_no_op(rows, cfg.method)
    context.notes.setdefault("coverage", []).append(f"quantize ({cfg.method}, {engine}): {coverage.summary(rows)}")
    return rows


def _report(float_model: nn.Module, model: nn.Module, cfg: QuantizeStepConfig, context: StepContext,
            calibration: list[torch.Tensor], seconds: float, qat_history: list[dict]) -> None:
    rows = _coverage(float_model, model, cfg, context)
    sample = cfg.error_batches is not None  # a truncated pass must be a fair sample, not the first classes stored
    error = compare_logits(float_model, model, (x for x, _ in islice(context.test_loader(device=CPU, shuffle=sample), cfg.error_batches)))
    low_precision = [r for r in rows if r["weight_dtype"] not in ("float32", "float64")]
    total_weights = sum(r["weights"] for r in rows) or 1
    context.metrics.update({
        "quant_sqnr_db": error["sqnr_db"], "quant_rel_l2": error["rel_l2"], "quant_top1_agreement": error["top1_agreement"],
        "quant_kl": error["kl"], "quant_error_samples": error["samples"], "quant_layers_quantized": len(low_precision),
        "quant_layers_float": len(rows) - len(low_precision),
        "quant_weight_fraction_quantized": sum(r["weights"] for r in low_precision) / total_weights,
        "quant_calibration_images": sum(len(x) for x in calibration), "quant_seconds": seconds})
    if qat_history:
        context.metrics.update(quant_qat_seconds=sum(r["seconds"] for r in qat_history), quant_qat_epochs=len(qat_history))
        context.artifacts["qat_history.json"] = json.dumps(qat_history, indent=2).encode()
    source = "validation" if len(context.data.val) else "training"
    dtypes = Counter(r["weight_dtype"] for r in rows)
    context.notes.update({
        "quant_method": _describe(cfg, model, calibration, source),
        "quant_layers": _describe_layers(rows, cfg.method) + f" (weight dtypes: {dict(dtypes)}); per-layer table in quant_layers.json",
        "quant_error": (f"quantized vs float logits on {error['samples']} test images: rel_l2 = ||f-q||/||f||, "
                        "sqnr_db = 20 log10(||f||/||f-q||), top1_agreement = % same argmax, kl = mean KL(softmax f || softmax q) in nats")})
    context.artifacts["quant_layers.json"] = json.dumps(rows, indent=2).encode()
