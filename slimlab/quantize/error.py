"""Quantization error against the float model: logit metrics (rel. L2, SQNR, top-1 agreement, KL) and per-layer SQNR."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from slimlab.quantize.layers import is_quantized_layer, layer_row, weighted_layers


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    """10·log10(‖x‖² / ‖x−y‖²) = 20·log10(‖x‖ / ‖x−y‖); infinite when the outputs are identical."""
    return math.inf if noise_energy == 0 else 10 * math.log10(signal_energy / noise_energy)


def logit_error(reference: torch.Tensor, quantized: torch.Tensor) -> dict:
    """Relative L2 and SQNR over all logits, top-1 agreement (%), mean KL(softmax(float) || softmax(quant)) in nats."""
    reference, quantized = reference.float(), quantized.float()
    signal, noise = reference.pow(2).sum().item(), (reference - quantized).pow(2).sum().item()
    kl = nn.functional.kl_div(quantized.log_softmax(1), reference.log_softmax(1), log_target=True, reduction="batchmean")
    return {"rel_l2": math.sqrt(noise / signal) if signal else math.inf, "sqnr_db": sqnr_db(signal, noise),
            "top1_agreement": 100.0 * (reference.argmax(1) == quantized.argmax(1)).float().mean().item(), "kl": kl.item()}


@torch.inference_mode()
def compare_logits(float_model: nn.Module, quantized: nn.Module, batches: Iterable[torch.Tensor]) -> dict:
    """logit_error over every batch, both models fed the same inputs; adds the sample count."""
    float_model.eval(), quantized.eval()
    reference, outputs = [], []
    for x in batches:
        reference.append(float_model(x).float())
        outputs.append(quantized(x).float())
    reference, outputs = torch.cat(reference), torch.cat(outputs)
    return {**logit_error(reference, outputs), "samples": len(reference)}


def _dequantized(t: torch.Tensor) -> torch.Tensor:
    return t.dequantize() if t.is_quantized else t.float()


def _copy(t):
    return t.clone() if isinstance(t, torch.Tensor) else t


def _capture(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor) -> dict[str, tuple]:
    seen: dict[str, tuple] = {}
    # Copies, because a later in-place ReLU would otherwise rewrite what was recorded.
    hooks = [m.register_forward_hook(lambda _m, inputs, output, n=n: seen.__setitem__(n, (_copy(inputs[0]), _copy(output))))
             for n, m in modules.items()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.inference_mode()
def layer_table(reference: nn.Module, quantized: nn.Module, batches: Iterable[torch.Tensor]) -> list[dict]:
    """One row per weighted layer of `quantized`: weight dtype and, for quantized layers, two SQNRs against `reference`.

    `reference` is the float model fused the same way (its module names match). `sqnr_db` compares the layer's output
    in the quantized model with the float one (error accumulated up to here); `local_sqnr_db` feeds the layer the
    float input, quantized with the layer's own input scale, so it isolates this layer (used to pick layers to skip).
    """
    reference.eval(), quantized.eval()
    layers = dict(weighted_layers(quantized))
    reference_modules = dict(reference.named_modules())
    measured = [n for n, m in layers.items() if is_quantized_layer(m) and n in reference_modules]
    energy = {n: [0.0, 0.0, 0.0] for n in measured}  # ‖float‖², ‖float − in model‖², ‖float − layer alone‖²
    for x in batches:
        floats = _capture(reference, {n: reference_modules[n] for n in measured}, x)
        quants = _capture(quantized, {n: layers[n] for n in measured}, x)
        for n in measured:
            (f_in, f_out), (q_in, q_out) = floats.get(n, (None, None)), quants.get(n, (None, None))
            if not all(isinstance(t, torch.Tensor) for t in (f_in, f_out, q_in, q_out)):
                continue  # recurrent layers return tuples; they get no SQNR
            fed = torch.quantize_per_tensor(f_in, q_in.q_scale(), q_in.q_zero_point(), q_in.dtype) if q_in.is_quantized else f_in
            alone = layers[n](fed)
            e = energy[n]
            e[0] += f_out.pow(2).sum().item()
            e[1] += (f_out - _dequantized(q_out)).pow(2).sum().item()
            e[2] += (f_out - _dequantized(alone)).pow(2).sum().item()
    rows = []
    for name, module in layers.items():
        row = layer_row(name, module)
        if name in energy and energy[name][0] > 0:
            row.update(sqnr_db=sqnr_db(energy[name][0], energy[name][1]), local_sqnr_db=sqnr_db(energy[name][0], energy[name][2]))
        rows.append(row)
    return rows
