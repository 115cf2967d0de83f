"""A run's deployable file: its name by format, loading it back, and timing it (median, p90, and whether the
machine was busy meanwhile)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from slimlab import measure

def speedups(metrics: dict, batch_sizes) -> dict:
    """speedup_bN_vs_float_eager / _vs_float_compiled: the float baselines a quantize step timed over this model's latency."""
    out = {}
    for batch in batch_sizes:
        for baseline in ("eager", "compiled"):
            base, own = metrics.get(f"float_{baseline}_latency_b{batch}_median_ms"), metrics.get(f"latency_b{batch}_median_ms")
            if base and own:
                out[f"speedup_b{batch}_vs_float_{baseline}"] = base / own
    return out


def inherit_flags(flagged: list[str], ratios: dict) -> list[str]:
    """The flagged metric keys plus every speed-up (speedup_bN_vs_float_X) whose baseline or own latency is flagged."""
    inherited = []
    for key in ratios:
        batch, _, baseline = key.removeprefix("speedup_b").partition("_vs_float_")
        if {f"float_{baseline}_latency_b{batch}_median_ms", f"latency_b{batch}_median_ms"} & set(flagged):
            inherited.append(key)
    return list(dict.fromkeys([*flagged, *inherited]))


MODEL_FILES = {"onnx": "model.onnx", "torch.export": "model.pt2"}  # the deployable file's name by format; others model.pt
DEFERRABLE_FORMATS = ("torchscript", "onnx", "torch.export")  # deployable files the latency stage can load back and time


def time_latency(model: nn.Module, cfg, example_of: Callable[[int], torch.Tensor]) -> tuple[dict, dict]:
    """Median and p90 latency and throughput at each of measure.batch_sizes, and the notes that say how: `latency`,
    and for figures timed while the machine was busy with other work, `latency_noisy` (why) and `latency_flagged`
    (the metric keys concerned, for `show`, `runs` and the report)."""
    threads = cfg.threads or measure.default_threads()
    metrics = {"latency_threads": threads}
    flagged, reasons, attempts = [], [], 0
    for batch in cfg.batch_sizes:
        example = example_of(batch)
        lat = measure.measure_latency(model, example, cfg.warmup, cfg.repeats, threads)
        keys = (f"latency_b{batch}_median_ms", f"latency_b{batch}_p90_ms", f"throughput_b{batch}_per_s")
        metrics.update(zip(keys, (lat["median_ms"], lat["p90_ms"], lat["throughput_per_s"])))
        attempts = max(attempts, lat["attempts"])
        if lat["disturbed"]:
            flagged += keys
            reasons.append(f"batch {batch}: {lat['disturbed']}")
    notes = {"latency": f"median and p90 of {cfg.repeats} timed forward passes after {cfg.warmup} warm-up, {threads} "
                        f"threads, {lat['timer']} on {example.device}"}
    if cfg.energy:
        energy, energy_notes = _inference_energy(model, cfg, example_of, threads)
        metrics.update(energy)
        notes.update(energy_notes)
        # taken just after the latencies: where a batch's latency was timed under load, its energy is flagged too
        flagged += [f"energy_b{b}_mj" for b in cfg.batch_sizes if f"latency_b{b}_median_ms" in flagged and f"energy_b{b}_mj" in energy]
    if flagged:
        notes["latency_noisy"] = (f"timed while the machine was busy with other work, {attempts} attempt{'s' * (attempts > 1)}: "
                                  + "; ".join(reasons) + "; the figures may be too slow")
        notes["latency_flagged"] = flagged
    return metrics, notes


def _inference_energy(model: nn.Module, cfg, example_of: Callable[[int], torch.Tensor], threads: int) -> tuple[dict, dict]:
    """energy_bN_mj at each batch size (measure.inference_energy). Without a counter, one note says why and no passes
    run."""
    metrics, source = {}, ""
    for batch in cfg.batch_sizes:
        millijoules, source = measure.inference_energy(model, example_of(batch), threads)
        if millijoules is None:
            return {}, {"energy_inference": f"not measured: {source}"}
        metrics[f"energy_b{batch}_mj"] = millijoules
    return metrics, {"energy_inference": f"millijoules per batch: {source} over {measure.ENERGY_WINDOW_S:g} s of "
                                         f"back-to-back passes after the latency, {threads} threads; the whole "
                                         "package's draw, its idle power included"}


def load_deployable(folder: Path, device: torch.device) -> nn.Module:
    """A run's saved model.pt (TorchScript), model.onnx or model.pt2 (torch.export, lowered as the run timed it)."""
    if (folder / "model.pt2").exists():
        from slimlab.quantize.pt2e import load_program

        return load_program(folder / "model.pt2")
    if (folder / "model.onnx").exists():
        from slimlab.quantize.onnx_runtime import OnnxRuntimeModule

        return OnnxRuntimeModule((folder / "model.onnx").read_bytes())
    return torch.jit.load(str(folder / "model.pt"), map_location=device).eval()


# --- self-describing deployable files ----------------------------------------------------------------------------

RAW_FILES = {"torchscript": "model_raw.pt", "onnx": "model_raw.onnx", "torch.export": "model_raw.pt2"}  # preprocessing inside
CHANNEL_ORDER = {1: "L (grey)", 3: "RGB"}


class RawInput(nn.Module):
    """A model with the run's preprocessing inside: raw pixels (uint8, or float in [0, 255]) NCHW in, logits out.

    The arithmetic is the loader's own ((x - 255 mean) * 1 / (255 std), in float32, then channels-last where the run
    used it), so the file gives the logits the run measured, bit for bit, on the same images."""

    def __init__(self, model: nn.Module, mean, std, channels_last: bool = False, device: torch.device | str = "cpu"):
        super().__init__()
        self.model = model
        self.register_buffer("offset", torch.tensor(mean).view(1, -1, 1, 1).to(device) * 255)
        self.register_buffer("inv_scale", 1.0 / (torch.tensor(std).view(1, -1, 1, 1).to(device) * 255))
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.offset) * self.inv_scale
        return self.model(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)


def describe_input(file: str, fmt: str, raw: bool, dataset) -> dict:
    """What a deployment must feed `file` and what comes out: the JSON saved beside it and in the run's notes."""
    c, h, w = dataset.image_shape
    mean, std = [float(v) for v in dataset.mean], [float(v) for v in dataset.std]
    feed = ("raw pixels in [0, 255], the preprocessing is inside the file" if raw else
            "float32 normalized pixels: (x / 255 - mean) / std per channel, x the 0-255 pixel value")
    return {"file": file, "format": fmt, "input": {"layout": "NCHW", "shape": ["batch", c, h, w], "channels": CHANNEL_ORDER.get(c, f"{c} channels"),
            "dtype": ("uint8 or float32" if fmt == "torchscript" else "uint8") if raw else "float32", "expects": feed},
            "normalization": {"mean": mean, "std": std, "of": f"what {dataset.name} normalizes with, per channel, as fractions of 255 (an image "
                              "folder: its own training images' mean and std)", "inside_the_file": raw},
            "output": {"logits": len(dataset.classes), "classes": list(dataset.classes), "top1": "argmax over the logits"}}


def with_preprocessing(model: nn.Module, fmt: str, blob: bytes, raw_example: torch.Tensor, mean, std,
                       channels_last: bool) -> tuple[bytes | None, str]:
    """The deployable file with the preprocessing inside (RAW_FILES), or None and why not."""
    try:
        if fmt == "torchscript":
            wrapped = RawInput(model, mean, std, channels_last, raw_example.device).eval()
            return measure.serialize_deployable(wrapped, raw_example)[0], ""
        if fmt == "onnx":
            return _onnx_with_preprocessing(blob, mean, std), ""
        if fmt == "torch.export":
            return _program_with_preprocessing(blob, raw_example, mean, std, channels_last), ""
    except Exception as exc:  # noqa: BLE001 - the normalized file stands; the record says why there is no raw one
        return None, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    return None, f"a {fmt} file has no variant with the preprocessing inside"


def _onnx_with_preprocessing(blob: bytes, mean, std) -> bytes:
    """The ONNX graph with Cast(uint8 -> float), Sub and Mul before its input: it takes raw uint8 pixels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(blob)
    graph = proto.graph
    normalized = graph.input[0]
    shape = [d.dim_param or d.dim_value for d in normalized.type.tensor_type.shape.dim]
    offset = (torch.tensor(mean).view(1, -1, 1, 1) * 255).numpy()
    inv_scale = (1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255)).numpy()
    graph.initializer.extend([numpy_helper.from_array(offset, "raw_offset"), numpy_helper.from_array(inv_scale, "raw_inv_scale")])
    nodes = [helper.make_node("Cast", ["raw_images"], ["raw_float"], to=TensorProto.FLOAT, name="raw_cast"),
             helper.make_node("Sub", ["raw_float", "raw_offset"], ["raw_centred"], name="raw_sub"),
             helper.make_node("Mul", ["raw_centred", "raw_inv_scale"], [normalized.name], name="raw_scale")]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.input.remove(normalized)
    graph.input.insert(0, helper.make_tensor_value_info("raw_images", TensorProto.UINT8, shape))
    return proto.SerializeToString()


def _program_with_preprocessing(blob: bytes, raw_example: torch.Tensor, mean, std, channels_last: bool) -> bytes:
    """The torch.export program exported again behind RawInput (dynamic batch), saved as the run saves programs."""
    import io

    from slimlab.quantize.pt2e import export_program, save_program

    _register_decomposed_ops()
    inner = torch.export.load(io.BytesIO(blob)).module()
    return save_program(export_program(RawInput(inner, mean, std, channels_last), raw_example.cpu()))  # no .eval(): an exported module refuses it


def _register_decomposed_ops() -> None:
    """The quantized_decomposed ops a PT2E program calls exist once this torch module is imported."""
    import importlib

    importlib.import_module("torch.ao.quantization.fx._decomposed")


def load_raw_file(blob: bytes, fmt: str, device: torch.device | str = "cpu"):
    """A raw-input deployable file loaded as a deployment would (torch or onnxruntime only): a callable on uint8 NCHW."""
    import io

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        return lambda images: torch.from_numpy(session.run(None, {"raw_images": images.cpu().numpy()})[0])
    if fmt == "torch.export":
        _register_decomposed_ops()
        return torch.export.load(io.BytesIO(blob)).module()
    return torch.jit.load(io.BytesIO(blob), map_location=device).eval()


@torch.no_grad()
def raw_top1(forward, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Top-1 (%) of a raw-input file on uint8 images, by argmax, in batches of `batch_size` (the run's eval batch)."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = forward(images[start:start + batch_size])
        correct += int((logits.argmax(dim=1).cpu() == labels[start:start + batch_size].cpu()).sum())  # not topk: what users write
    return 100.0 * correct / max(1, len(labels))
