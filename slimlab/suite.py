"""The coverage suite: every compression method on one model, each cell checked for doing what it claims.

A cell passes only when the compressed model runs with the right output shape and really is what it claims: int8
layers present and counted, and its logits within a stated SQNR floor of the float model's (quantization); the asked
sparsity reached (unstructured); parameters and MACs down (structured). A `SlimlabError` is a refusal, one line naming
the layer or operation; anything else, or a check that fails, is a failure. Used by tests/test_architectures.py and
bench/coverage.py, which writes docs/coverage.md.
"""
from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from slimlab.errors import SlimlabError
from slimlab.measure import count_macs, count_parameters

# Logit SQNR floors against the float model, in dB. Int8 of a whole random-weight ResNet with data-set batch norms
# lands at 12-23 dB (docs/coverage.md); 8 dB (error energy under 16% of the signal) still fails a broken scale or a
# layer fed the wrong tensor (about 0 dB). Dynamic quantization touches only linear layers: 15 dB. But some
# random-weight networks amplify any perturbation (1% noise on every conv output leaves MobileNetV2 a logit SQNR of
# 4 dB, ResNet-18 21 dB), so the floor is lowered to what ideal 8-bit noise does to *this* model, less
# NOISE_MARGIN_DB: Gaussian noise of NOISE_RELATIVE x the output std of every leaf module (a uniform 8-bit grid over
# +-4 std has 0.9%).
SQNR_FLOOR_DB = {"static": 8.0, "dynamic": 15.0, "qat": 8.0}
NOISE_RELATIVE, NOISE_MARGIN_DB = 0.01, 8.0
SPARSITY_TOLERANCE = 0.01  # unstructured: reached sparsity of the selected weights within this of the asked amount
# Structured at 50% of the channels: parameters and MACs left must be at most this fraction of the float model's (a
# conv between two pruned groups keeps a quarter; the stem, the classifier and blocked groups keep all of theirs).
STRUCTURED_MAX_LEFT = 0.75
# Attention models: the MLP widths are halved, but the residual width (tied to the class token, position embedding and
# every block) and torchvision's fused MultiheadAttention projections stay whole, so more is left.
STRUCTURED_MAX_LEFT_ATTENTION = 0.85


def structured_max_left(model: nn.Module) -> float:
    """The most of its parameters and MACs a model may keep after 50% channel pruning and still pass."""
    attention = any("Attention" in type(m).__name__ for m in model.modules())
    return STRUCTURED_MAX_LEFT_ATTENTION if attention else STRUCTURED_MAX_LEFT


@dataclass
class Cell:
    """One model x method result: 'pass', 'refused' (a one-line reason) or 'fail' (what went wrong), with its figures."""

    model: str
    method: str
    status: str
    message: str = ""
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Probe:
    """What a cell gets: the float model, calibration batches, labelled training batches, evaluation batches."""

    model: nn.Module
    calibration: list[torch.Tensor]
    train: list[tuple[torch.Tensor, torch.Tensor]]
    evaluate: list[torch.Tensor]
    num_classes: int
    noise_sqnr_db: float = float("nan")  # the model's logit SQNR under ideal 8-bit noise (see NOISE_RELATIVE)

    def floor(self, kind: str) -> float:
        """The SQNR a quantized copy of this model must keep (see SQNR_FLOOR_DB)."""
        return min(SQNR_FLOOR_DB[kind], self.noise_sqnr_db - NOISE_MARGIN_DB)


def _logit_sqnr(reference: nn.Module, candidate: nn.Module, batches: list[torch.Tensor]) -> float:
    from slimlab.quantize.error import compare_logits

    return compare_logits(reference, candidate, batches)["sqnr_db"]


def _int8_layers(model: nn.Module, float_model: nn.Module) -> tuple[int, int]:
    """int8 layers and weighted layers, counted as a run's coverage counts them (one per layer of the float model)."""
    from slimlab.quantize import coverage

    rows = coverage.per_module(coverage.layer_coverage(model), float_model)
    return sum(r["weight_dtype"] == "int8" for r in rows), len(rows)


def _check_quantized(probe: Probe, quantized: nn.Module, floor: float, reference: nn.Module | None = None) -> dict:
    out = quantized(probe.evaluate[0])
    if tuple(out.shape) != (probe.evaluate[0].shape[0], probe.num_classes):
        raise AssertionError(f"output shape {tuple(out.shape)}")
    int8, total = _int8_layers(quantized, probe.model)
    sqnr = _logit_sqnr(reference if reference is not None else probe.model, quantized, probe.evaluate)
    figures = {"int8_layers": int8, "layers": total, "sqnr_db": round(sqnr, 1)}
    if int8 == 0:
        raise AssertionError(f"no layer is int8 ({figures})")
    if not sqnr >= floor:
        raise AssertionError(f"logit SQNR {sqnr:.1f} dB under the {floor:.1f} dB floor ({figures})")
    return figures, quantized


def _static(engine: str) -> Callable[[Probe], dict]:
    def cell(probe: Probe) -> dict:
        from slimlab.quantize import StaticConfig, quantize_static

        quantized = quantize_static(probe.model, StaticConfig(engine=engine), probe.calibration)
        return _check_quantized(probe, quantized, probe.floor("static"))
    return cell


def _dynamic(probe: Probe) -> dict:
    from slimlab.quantize import DynamicConfig, coverage, quantize_dynamic_

    quantized = quantize_dynamic_(copy.deepcopy(probe.model), DynamicConfig(), probe.evaluate[0])
    rows = coverage.explain(coverage.per_module(coverage.layer_coverage(quantized), probe.model), probe.model, "dynamic", known_reasons=quantized.slimlab_float_reasons)
    coverage.refuse_no_op(rows, "dynamic")  # as the quantize step does: SqueezeNet has no Linear layer at all
    return _check_quantized(probe, quantized, probe.floor("dynamic"))


def _qat(probe: Probe) -> dict:
    """Three QAT steps at a rate of 1e-4, then conversion: the int8 model must compute what the fake-quantized model it
    came from computes (the steps moved the weights, so the float model is no longer the reference; on a random-weight
    EfficientNet even three small steps move the logits by more than int8 rounding does)."""
    from slimlab.quantize import QATConfig, convert_qat, prepare_qat
    from slimlab.quantize.qat import calibrate_observers_
    from slimlab.quantize.torch_engine import runs_or_refuse

    prepared = prepare_qat(probe.model, QATConfig(), probe.calibration[0])
    calibrate_observers_(prepared, probe.calibration)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-4, momentum=0.9)
    prepared.train()
    prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)  # the statistics set from data stay (3 small batches would move them)
    for x, y in probe.train[:3]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(prepared(x), y).backward()
        optimizer.step()
    prepared.eval()
    quantized = runs_or_refuse(convert_qat(prepared), probe.calibration[0][:1], "x86", type(probe.model).__name__)
    return _check_quantized(probe, quantized, probe.floor("qat"), reference=prepared)


def _unstructured(method: str, scope: str) -> Callable[[Probe], dict]:
    def cell(probe: Probe) -> dict:
        from slimlab.prune import mask_sparsity, prune_unstructured_

        model = copy.deepcopy(probe.model)
        masks = prune_unstructured_(model, 0.5, method, scope, batches=probe.train)
        reached = mask_sparsity(masks)
        out = model(probe.evaluate[0])
        if tuple(out.shape) != (probe.evaluate[0].shape[0], probe.num_classes):
            raise AssertionError(f"output shape {tuple(out.shape)}")
        if abs(reached - 0.5) > SPARSITY_TOLERANCE:
            raise AssertionError(f"sparsity {reached:.4f} of the selected weights, asked 0.5")
        return {"sparsity": round(reached, 4), "layers": len(masks)}, model
    return cell


def _structured(engine: str) -> Callable[[Probe], dict]:
    def cell(probe: Probe) -> dict:
        from slimlab.prune import prune_structured_

        model = copy.deepcopy(probe.model)
        example = probe.evaluate[0][:1]
        before_p, before_m = count_parameters(probe.model)["params"], count_macs(probe.model, example)["macs"]
        prune_structured_(model, 0.5, example, engine=engine, context=_context(model, probe))
        out = model(probe.evaluate[0])
        if tuple(out.shape) != (probe.evaluate[0].shape[0], probe.num_classes):
            raise AssertionError(f"output shape {tuple(out.shape)}")
        figures = {"params_left": round(count_parameters(model)["params"] / before_p, 3),
                   "macs_left": round(count_macs(model, example)["macs"] / before_m, 3),
                   "engine": getattr(model, "slimlab_structured_engine", engine)}
        limit = structured_max_left(probe.model)
        if max(figures["params_left"], figures["macs_left"]) > limit:
            raise AssertionError(f"pruned too little: {figures}, at most {limit} may be left")
        return figures, model
    return cell


def _context(model: nn.Module, probe: Probe):
    from slimlab.prune import PruneContext

    return PruneContext(model=model, batches=probe.train)


METHODS: dict[str, Callable[[Probe], dict]] = {
    "dynamic": _dynamic,
    "static x86": _static("x86"),
    "static pt2e": _static("pt2e"),
    "static onnxruntime": _static("onnxruntime"),
    "static auto": _static("auto"),
    "qat x86": _qat,
    "l1 local": _unstructured("l1", "local"),
    "l1 global": _unstructured("l1", "global"),
    "taylor local": _unstructured("taylor", "local"),
    "taylor global": _unstructured("taylor", "global"),
    "structured": _structured("auto"),
    "structured slimlab": _structured("slimlab"),
    "torch-pruning": _structured("torch_pruning"),
}


def run_cell(name: str, method: str, probe: Probe, latency: bool = False) -> Cell:
    """One method on one model, its checks applied; never raises. With `latency`, a passing cell also gets the batch-1
    latency of the compressed model over the float model's, timed one after the other (bench/coverage.py)."""
    start = time.perf_counter()
    torch.manual_seed(0)  # QAT's dropout and the random scores draw the same numbers in every process
    try:
        figures, compressed = METHODS[method](probe)
        if latency:
            ratio, disturbed = _latency_ratio(probe, compressed)
            figures["latency_b1_ratio"] = round(ratio, 3)
            if disturbed:
                figures["latency_disturbed"] = disturbed
        status, message = "pass", ""
    except SlimlabError as exc:
        status, message, figures = "refused", str(exc).splitlines()[0], {}
    except AssertionError as exc:
        status, message, figures = "fail", str(exc), {}
    except Exception as exc:  # noqa: BLE001  (a cell that crashes is a result to report, not a reason to stop the suite)
        last = traceback.extract_tb(exc.__traceback__)[-1]
        status, figures = "fail", {}
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} ({last.filename.split('/')[-1]}:{last.lineno})"
    return Cell(name, method, status, message, figures, time.perf_counter() - start)


def _latency_ratio(probe: Probe, compressed: nn.Module) -> tuple[float, str]:
    """Compressed over float batch-1 median latency, and why either timing was disturbed (empty when neither was)."""
    from slimlab.measure import measure_latency

    example = probe.evaluate[0][:1]
    with torch.inference_mode():
        base = measure_latency(probe.model, example, warmup=5, repeats=30)
        mine = measure_latency(compressed, example, warmup=5, repeats=30)
    return mine["median_ms"] / base["median_ms"], "; ".join(str(t["disturbed"]) for t in (base, mine) if t.get("disturbed"))


def make_probe(model: nn.Module, num_classes: int = 10, size: int = 32, batch: int = 8, seed: int = 0) -> Probe:
    """Synthetic-band images (slimlab's synthetic dataset), normalised; batch norms set from them (see the zoo)."""
    from slimlab.data.synthetic import make_synthetic
    from slimlab.models.zoo import set_norm_statistics_

    split = make_synthetic(batch * 8, num_classes, size, 3, seed)
    images = (split.images.float() / 255 - 0.45) / 0.25
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    labels = [split.labels[i:i + batch] for i in range(0, len(images), batch)]
    set_norm_statistics_(model, batches[:4])
    probe = Probe(model, batches[:4], list(zip(batches[:4], labels[:4])), batches[4:6], num_classes)
    probe.noise_sqnr_db = noise_sqnr_db(model, probe.evaluate, seed)
    return probe


@torch.no_grad()
def noise_sqnr_db(model: nn.Module, batches: list[torch.Tensor], seed: int = 0) -> float:
    """Logit SQNR of `model` with Gaussian noise of NOISE_RELATIVE x std added to every leaf module's output."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(_module, _inputs, output):
        return output + NOISE_RELATIVE * output.std() * torch.randn(output.shape, generator=generator)

    noisy = copy.deepcopy(model).eval()
    for m in noisy.modules():  # static int8 rounds every leaf's output (activations, norms, pools), not only the layers'
        if not list(m.children()) and not isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten)):
            m.register_forward_hook(lambda mod, i, o: perturb(mod, i, o) if isinstance(o, torch.Tensor) else None)
    return _logit_sqnr(model, noisy, batches)
