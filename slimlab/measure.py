"""Measurements of a model: size on disk, parameters, MACs, latency, energy, environment; each says how it was taken."""
from __future__ import annotations

import io
import os
import platform
import statistics
import subprocess
import time
import warnings
import zlib
from pathlib import Path

import torch
from torch import nn

# --- size -------------------------------------------------------------------------------------------------


def serialize_deployable(model: nn.Module, example: torch.Tensor) -> tuple[bytes, str]:
    """The model as a self-contained file: TorchScript (loads with torch.jit.load, no slimlab code needed).

    Falls back to a state dict for models TorchScript cannot trace; the format is returned with the bytes.
    """
    model = model.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, buffer)
        return buffer.getvalue(), "torchscript"
    except Exception:  # tracing fails on data-dependent control flow; weights are still deployable
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getvalue(), "state_dict"


def size_figures(blob: bytes) -> dict:
    """Bytes on disk and the deflate-compressed bytes (what a zip of the file would weigh)."""
    return {"model_size_bytes": len(blob), "model_size_deflate_bytes": len(zlib.compress(blob, 9))}


# --- counts -----------------------------------------------------------------------------------------------


def _weights(module: nn.Module):
    """(name, tensor) for float parameters, and for the packed weights and biases of quantized modules (dequantized,
    so an entry counts as zero exactly when its value is zero, whatever its zero point)."""
    for name, p in module.named_parameters():
        yield name, p.detach()
    for name, m in module.named_modules():
        for attr in ("weight", "bias"):
            packed = getattr(m, attr, None)
            if callable(packed) and not isinstance(packed, torch.Tensor):  # quantized modules expose weight() and bias()
                try:
                    t = packed()
                except Exception:
                    continue
                if isinstance(t, torch.Tensor):
                    yield f"{name}.{attr}", t.dequantize() if t.is_quantized else t


def count_parameters(model: nn.Module) -> dict:
    """Parameter count and non-zero count (quantized layers included through their packed weights)."""
    total = nonzero = 0
    for _, t in _weights(model):
        total += t.numel()
        nonzero += int(torch.count_nonzero(t))
    return {"params": total, "nonzero_params": nonzero, "sparsity": 1 - nonzero / total if total else 0.0}


def _is_conv(module: nn.Module) -> bool:
    return hasattr(module, "kernel_size") and hasattr(module, "in_channels") and hasattr(module, "groups")


def _is_linear(module: nn.Module) -> bool:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def count_macs(model: nn.Module, example: torch.Tensor) -> dict:
    """Multiply-accumulates of convolutions and linear layers for one forward pass of `example` (per sample)."""
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        out = output.dequantize() if getattr(output, "is_quantized", False) else output
        if _is_conv(module):
            k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,)
            per_out = module.in_channels // module.groups * int(torch.tensor(k).prod())
            macs += out.numel() * per_out
        elif _is_linear(module):
            macs += out.numel() * module.in_features

    # Hooked by what a module is, not by being a leaf: int8 Linear layers hold their packed weights in a child module.
    # A conv or linear module inside another (a QAT conv-bn) is counted once, by the outer one.
    layers = {name: m for name, m in model.named_modules() if _is_conv(m) or _is_linear(m)}
    outer = [m for name, m in layers.items() if not any(name.startswith(f"{other}.") for other in layers if other)]
    handles = [m.register_forward_hook(hook) for m in outer]
    try:
        with torch.inference_mode():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    per_sample = macs // example.shape[0]
    return {"macs": per_sample, "flops": 2 * per_sample}


# --- latency ----------------------------------------------------------------------------------------------


def measure_latency(model: nn.Module, example: torch.Tensor, warmup: int = 10, repeats: int = 30,
                    threads: int | None = None) -> dict:
    """Median and p90 wall time of `repeats` forward passes after `warmup`; CUDA events on GPU, perf_counter on CPU."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    times_ms: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(example)
            if example.is_cuda:
                torch.cuda.synchronize()
                for _ in range(repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(example)
                    end.record()
                    torch.cuda.synchronize()
                    times_ms.append(start.elapsed_time(end))
            else:
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model(example)
                    times_ms.append((time.perf_counter() - t0) * 1e3)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    times_ms.sort()
    median = statistics.median(times_ms)
    p90 = times_ms[min(len(times_ms) - 1, int(round(0.9 * (len(times_ms) - 1))))]
    batch = example.shape[0]
    return {"median_ms": median, "p90_ms": p90, "throughput_per_s": batch * 1e3 / median, "threads": used_threads,
            "repeats": repeats, "warmup": warmup, "timer": "cuda_event" if example.is_cuda else "perf_counter"}


# --- energy -----------------------------------------------------------------------------------------------

RAPL_PATH = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


class EnergyMeter:
    """Joules over a `with` block from NVML (GPU) or RAPL (CPU package); `joules` stays None with a `reason` otherwise."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device, self.enabled = device, enabled
        self.joules: float | None = None
        self.source = ""
        self.reason = "" if enabled else "switched off (measure.energy: false)"
        self._read = None

    def __enter__(self):
        if not self.enabled:
            return self
        self._read = self._nvml_reader() if self.device.type == "cuda" else self._rapl_reader()
        if self._read is not None:
            self._start = self._read()
        return self

    def __exit__(self, *exc):
        if self._read is not None:
            delta = self._read() - self._start
            if self.source == "rapl" and delta < 0:  # the counter wrapped once
                delta += int(Path(RAPL_PATH.parent / "max_energy_range_uj").read_text())
            self.joules = delta / (1e3 if self.source == "nvml" else 1e6)
        return False

    def _nvml_reader(self):
        try:
            import pynvml
        except ImportError:
            self.reason = "NVML unavailable: the package nvidia-ml-py is not installed"
            return None
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as exc:
            self.reason = f"NVML energy counter unreadable: {exc}"
            return None
        self.source = "nvml"
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # millijoules

    def _rapl_reader(self):
        if not RAPL_PATH.exists():
            self.reason = f"no RAPL counter at {RAPL_PATH} (not an Intel/AMD host exposing powercap, or a VM) and no GPU"
            return None
        if not os.access(RAPL_PATH, os.R_OK):
            self.reason = f"RAPL counter {RAPL_PATH} is not readable (needs root)"
            return None
        self.source = "rapl"
        return lambda: int(RAPL_PATH.read_text())  # microjoules


# --- environment ------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def code_version() -> dict:
    """The commit of the slimlab checkout running now, and whether it has uncommitted changes (None outside git)."""
    commit = git_commit()
    dirty = None
    if commit:
        try:
            out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                                 capture_output=True, text=True, timeout=5)
            dirty = bool(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return {"commit": commit, "dirty": dirty}


def environment(device: torch.device) -> dict:
    """What the figures were measured on."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": str(device), "git_commit": git_commit(), "executor": os.environ.get("SLIMLAB_EXECUTOR", "this process")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
