"""Measurements of a model: size on disk, parameters, MACs, latency, energy, environment; each says how it was taken."""
from __future__ import annotations

import io
import os
import platform
import re
import statistics
import subprocess
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# --- size -------------------------------------------------------------------------------------------------


def serialize_deployable(model: nn.Module, example: torch.Tensor) -> tuple[bytes, str]:
    """The model as a self-contained file: TorchScript (loads with torch.jit.load, no slimlab code needed).

    The same model gives the same bytes whatever the process traced before (`_canonical_torchscript`). Falls back to
    a state dict for models TorchScript cannot trace; the format is returned with the bytes.
    """
    model = model.eval()
    try:
        blob = _trace_and_save(model, example)
        if _PLAIN_TYPE_FILE.search(blob):  # the first trace of a class in this process keeps its plain name: trace
            blob = _trace_and_save(model, example)  # again, and every type name is numbered, as in any later trace
        return _canonical_torchscript(blob), "torchscript"
    except Exception:  # tracing fails on data-dependent control flow; weights are still deployable
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getvalue(), "state_dict"


_MANGLED = re.compile(rb"___torch_mangle_(\d+)")
_PLAIN_TYPE_FILE = re.compile(rb"/code/__torch__/(?:[A-Za-z0-9_]+/)*(?!___torch_mangle_)[A-Za-z0-9_]+\.py(?!\.debug)")
_WRITER_RECORDS = {".data/serialization_id", ".data/version", "version", "byteorder"}  # written by PyTorchFileWriter


def _trace_and_save(model: nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad():  # TorchScript's own warnings (tracer, deprecation) are the user's to see
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
    return buffer.getvalue()


def _canonical_torchscript(blob: bytes) -> bytes:
    """The same TorchScript archive, independent of what the process compiled before: the `___torch_mangle_N` type
    names numbered in order of first appearance (the module tree first), the tracer's debug records (Python call
    stacks of the tracing process) left out, records in name order, written by torch's own archive writer."""
    archive = zipfile.ZipFile(io.BytesIO(blob))
    records = [(info.filename.split("/", 1)[1], archive.read(info)) for info in archive.infolist()]
    numbers: dict[bytes, bytes] = {}
    for name, data in sorted(records, key=lambda r: r[0] != "data.pkl"):
        if name.endswith((".py", ".pkl")):
            for match in _MANGLED.finditer(name.encode() + b"\n" + data):
                numbers.setdefault(match.group(1), str(len(numbers)).encode())

    def renamed(data: bytes) -> bytes:
        return _MANGLED.sub(lambda m: b"___torch_mangle_" + numbers[m.group(1)], data)

    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    kept = sorted((renamed(name.encode()).decode(), renamed(data) if name.endswith((".py", ".pkl")) else data)
                  for name, data in records if not name.endswith(".debug_pkl") and name not in _WRITER_RECORDS)
    for name, data in kept:
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def size_figures(blob: bytes, fmt: str = "torchscript") -> dict:
    """Bytes on disk, the deflate-compressed bytes (what a zip of the file would weigh) and the weight payload."""
    figures = {"model_size_bytes": len(blob), "model_size_deflate_bytes": len(zlib.compress(blob, 9))}
    payload = weight_payload_bytes(blob, fmt)
    return figures if payload is None else {**figures, "weight_payload_bytes": payload}


# Tensor records of a torch zip archive: TorchScript and torch.save keep storages in data/N (and TorchScript's traced
# constants in constants/N); torch.export keeps data/weights/NAME and data/constants/NAME beside a JSON index of them.
_TENSOR_RECORD = re.compile(r"^[^/]+/(?:data/\d+|constants/\d+|data/(?:weights|constants)/[^/]+(?<!\.json))$")


def weight_payload_bytes(blob: bytes, fmt: str) -> int | None:
    """Bytes of the parameters and buffers as the deployable file stores them: int8 weights count one byte each, plus
    their scales and zero points; code, pickled structure and metadata are left out. For a small model these are a
    fraction of the file (TorchScript keeps ~3.6 KB of code per quantized convolution). None for an unknown format."""
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load_from_string(blob).graph
        constants = [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
        return sum(numpy_helper.to_array(t).nbytes for t in [*graph.initializer, *constants])
    if fmt not in ("torchscript", "state_dict", "torch.export"):
        return None
    archive = zipfile.ZipFile(io.BytesIO(blob))
    return sum(info.file_size for info in archive.infolist() if _TENSOR_RECORD.match(info.filename))


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


LATENCY_ATTEMPTS = 3  # a disturbed measurement is taken again this many times in all, then recorded flagged
RETRY_PAUSE_S = 0.5  # between attempts, growing: a burst of other work may pass
MIN_CPU_SHARE = 0.7  # of one core: below it, the process was kept off the CPU while it was timed
MAX_P90_OVER_MEDIAN = 2.0
MIN_WINDOW_S = 0.3  # the CPUs are watched at least this long per attempt
CORE_TOLERANCE = 0.5  # cores of other work tolerated beyond the cores left free by the timing threads (/proc/stat ticks are coarse)


def default_threads() -> int:
    """Timing threads by default: torch's setting (a local worker's share of the cores, say) but never more than the
    CPUs this process may run on."""
    return max(1, min(torch.get_num_threads(), len(usable_cpus()) or torch.get_num_threads()))


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return list(range(os.cpu_count() or 1))


def cpu_busy_seconds(cpus: list[int], stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds the given CPUs spent busy (anything but idle and iowait) since boot, from /proc/stat; None without it."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    wanted, busy = {f"cpu{c}" for c in cpus}, 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]] + [0] * (8 - len(fields[1:9]))
            busy += sum(values) - values[3] - values[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class Disturbance:
    """What else happened on the CPUs while a latency was timed; `reason` is empty when nothing did."""

    cpu_share: float  # this process's CPU time over the wall time of the window, in cores
    other_cores: float | None  # cores of other processes' work on the CPUs this process may use (None: no /proc/stat)
    p90_over_median: float
    reason: str = ""


def judge_disturbance(wall_s: float, own_cpu_s: float, busy_s: float | None, cpus: int, threads: int,
                      p90_over_median: float) -> Disturbance:
    """Whether a timing window was disturbed: kept off the CPU, the CPUs shared with other work, or samples spread."""
    share = own_cpu_s / wall_s if wall_s > 0 else 1.0
    other = max(0.0, (busy_s - own_cpu_s) / wall_s) if busy_s is not None and wall_s > 0 else None
    reasons = []
    if share < MIN_CPU_SHARE:
        reasons.append(f"the process ran {share:.0%} of the time")
    if other is not None and other > cpus - threads + CORE_TOLERANCE:
        reasons.append(f"other processes kept {other:.1f} of the {cpus} CPUs busy beside {threads} timing thread{'s' * (threads > 1)}")
    if p90_over_median > MAX_P90_OVER_MEDIAN:
        reasons.append(f"p90 was {p90_over_median:.1f}x the median")
    return Disturbance(share, other, p90_over_median, "; ".join(reasons))


def measure_latency(model: nn.Module, example: torch.Tensor, warmup: int = 10, repeats: int = 30,
                    threads: int | None = None, attempts: int | None = None) -> dict:
    """Median and p90 wall time of `repeats` forward passes after `warmup`; CUDA events on GPU, perf_counter on CPU.

    On the CPU a timing that was disturbed (`judge_disturbance`) is taken again, up to `attempts` times in all; the
    least disturbed attempt is returned, with `disturbed` saying why when even that one was."""
    previous_threads = torch.get_num_threads()
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:
        best = None
        for attempt in range(1, max(1, attempts or LATENCY_ATTEMPTS) + 1):
            result = _timed_window(model, example, warmup, repeats)
            result.update(threads=torch.get_num_threads(), attempts=attempt)
            if best is None or (bool(result["disturbed"]), result["median_ms"]) < (bool(best["disturbed"]), best["median_ms"]):
                best = {**result, "attempts": attempt}
            if not result["disturbed"] or example.is_cuda:
                break
            time.sleep(RETRY_PAUSE_S * attempt)
        best["attempts"] = attempt
    finally:
        torch.set_num_threads(previous_threads)
    return best


def _timed_window(model: nn.Module, example: torch.Tensor, warmup: int, repeats: int) -> dict:
    """One timing: warm-up, then `repeats` timed passes; on the CPU, the CPUs are watched from the first warm-up pass
    for at least MIN_WINDOW_S (untimed passes fill a shorter window), since /proc/stat counts in 10 ms ticks."""
    cpus = usable_cpus()
    times_ms: list[float] = []
    busy0, cpu0, wall0 = cpu_busy_seconds(cpus), time.process_time(), time.perf_counter()
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
            while time.perf_counter() - wall0 < MIN_WINDOW_S:
                model(example)
    wall, own, busy1 = time.perf_counter() - wall0, time.process_time() - cpu0, cpu_busy_seconds(cpus)
    times_ms.sort()
    median = statistics.median(times_ms)
    p90 = times_ms[min(len(times_ms) - 1, int(round(0.9 * (len(times_ms) - 1))))]
    batch = example.shape[0]
    result = {"median_ms": median, "p90_ms": p90, "throughput_per_s": batch * 1e3 / median, "repeats": repeats,
              "warmup": warmup, "timer": "cuda_event" if example.is_cuda else "perf_counter", "disturbed": ""}
    if not example.is_cuda:  # a GPU timing is judged by its events; the CPU only waits on them
        busy = busy1 - busy0 if busy0 is not None and busy1 is not None else None
        judged = judge_disturbance(wall, own, busy, len(cpus), torch.get_num_threads(), p90 / median if median > 0 else 1.0)
        result.update(disturbed=judged.reason, cpu_share=judged.cpu_share, other_cores=judged.other_cores)
    return result


# --- energy -----------------------------------------------------------------------------------------------

RAPL_ROOT = Path("/sys/class/powercap")
POLL_SECONDS = 5.0  # well inside the shortest RAPL wrap (a 2^32 uJ range at 400 W wraps after ~10 s is the rare worst case)


class EnergyMeter:
    """Joules over a `with` block from NVML (the run's GPU) or RAPL (every CPU package); `joules` stays None with a
    `reason` otherwise. Counters are read every `poll_seconds` by a background thread, so a RAPL counter that wraps
    any number of times is followed. As a training callback it adds each epoch's joules to the epoch's history record
    (`energy_j`), so that a resumed training sums the energy of all its segments."""

    def __init__(self, device: torch.device, enabled: bool = True, rapl_root: Path | None = None,
                 poll_seconds: float = POLL_SECONDS):
        self.device, self.enabled, self.poll_seconds = device, enabled, poll_seconds
        self.rapl_root = rapl_root or RAPL_ROOT
        self.joules: float | None = None
        self.source = ""
        self.reused = False  # the training was found done: nothing ran under this meter
        self.reason = "" if enabled else "switched off (measure.energy: false)"
        self._counters: list[_Counter] = []
        self._scale = 1e6
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoch_start = 0.0

    def __enter__(self):
        if not self.enabled:
            return self
        self._counters = self._nvml_counters() if self.device.type == "cuda" else self._rapl_counters()
        if self._counters:
            self._epoch_start = 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll_until_stopped, name="slimlab-energy", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._counters:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.joules = self.read()
        return False

    @property
    def counting(self) -> bool:
        """Whether a counter is being read (inside the block); `reason` says why not."""
        return bool(self._counters)

    def read(self) -> float:
        """Joules since the block was entered (a poll of every counter now)."""
        self.poll()
        return sum(c.total for c in self._counters) / self._scale

    def poll(self) -> None:
        """Read every counter once and add what it advanced, a wrap included."""
        with self._lock:
            for counter in self._counters:
                counter.advance()

    def on_epoch_end(self, epoch: int, model: nn.Module, record: dict) -> None:
        if self._counters:
            now = self.read()
            record["energy_j"] = now - self._epoch_start
            record["energy_source"] = self.source
            self._epoch_start = now

    def _poll_until_stopped(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except (OSError, ValueError):  # a counter that vanished: the final read says so
                pass

    def _nvml_counters(self) -> list:
        try:
            import pynvml
        except ImportError:
            self.reason = "NVML unavailable: the package nvidia-ml-py is not installed"
            return []
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByPciBusId(cuda_pci_bus_id(self.device))
            read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # millijoules  # noqa: E731
            counter = _Counter(read, wrap=None)
        except Exception as exc:
            self.reason = f"NVML energy counter unreadable: {exc}"
            return []
        self.source, self._scale = "nvml", 1e3
        return [counter]

    def _rapl_counters(self) -> list:
        packages = rapl_packages(self.rapl_root)
        if not packages:
            self.reason = (f"no RAPL counter under {self.rapl_root} (not an Intel/AMD host exposing powercap, or a VM) "
                           "and no GPU")
            return []
        unreadable = [p for p in packages if not os.access(p / "energy_uj", os.R_OK)]
        if unreadable:
            self.reason = f"RAPL counter {unreadable[0] / 'energy_uj'} is not readable (needs root)"
            return []
        try:
            counters = [_Counter(lambda p=p: int((p / "energy_uj").read_text()), int((p / "max_energy_range_uj").read_text()))
                        for p in packages]
        except (OSError, ValueError) as exc:
            self.reason = f"RAPL counter unreadable: {exc}"
            return []
        self.source = "rapl" if len(packages) == 1 else f"rapl, {len(packages)} packages"
        return counters


def energy_unreadable(device: torch.device | str) -> str:
    """Why no energy counter can be read for `device` here (EnergyMeter's reason), or '' when one can."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    meter = EnergyMeter(torch.device(auto if device == "auto" else device), poll_seconds=3600)
    with meter:
        pass
    return "" if meter.source else meter.reason


ENERGY_WINDOW_S = 2.0  # RAPL counts in ~15 uJ steps and updates about every ms: seconds of passes make a steady figure


def inference_energy(model: nn.Module, example: torch.Tensor, threads: int, seconds: float = ENERGY_WINDOW_S,
                     rapl_root: Path | None = None) -> tuple[float | None, str]:
    """Millijoules per forward pass of `example`, and the counter read: the energy counters (RAPL for every CPU package,
    NVML for a GPU) over `seconds` of back-to-back passes, over the passes. The counters see the whole package or GPU,
    so its idle draw is included (one pass's share of it), and so is any other work; the figure is taken just after
    the latency, whose disturbance check covers it. (None, why) without a readable counter, and no passes run."""
    meter = EnergyMeter(example.device, rapl_root=rapl_root, poll_seconds=min(POLL_SECONDS, seconds))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    passes = 0
    try:
        with torch.inference_mode(), meter:
            if not meter.counting:
                return None, meter.reason
            start = time.perf_counter()
            while passes == 0 or time.perf_counter() - start < seconds:
                model(example)
                passes += 1
            if example.is_cuda:
                torch.cuda.synchronize()
    finally:
        torch.set_num_threads(previous)
    return (meter.joules * 1e3 / passes, meter.source) if meter.joules is not None else (None, meter.reason)


class _Counter:
    """One hardware energy counter: the running total of what it advanced since it was first read."""

    def __init__(self, read, wrap: int | None):
        self.read, self.wrap = read, wrap
        self.last = read()
        self.total = 0

    def advance(self) -> None:
        value = self.read()
        delta = value - self.last
        if delta < 0 and self.wrap:  # wrapped past its range since the last poll
            delta += self.wrap
        self.total += max(0, delta)
        self.last = value


def rapl_packages(root: Path) -> list[Path]:
    """Every CPU package's RAPL zone (intel-rapl:N, not its sub-zones intel-rapl:N:M), AMD's included."""
    if not root.is_dir():
        return []
    zones = [z for z in root.iterdir() if re.fullmatch(r"intel-rapl:\d+", z.name) and (z / "energy_uj").exists()]
    return sorted(zones, key=lambda z: int(z.name.split(":")[1]))


def cuda_pci_bus_id(device: torch.device) -> str:
    """The PCI bus id of a CUDA device as NVML names it: the CUDA index counts only the visible devices
    (CUDA_VISIBLE_DEVICES, as on SLURM nodes), in CUDA's order, while NVML's indices count them all."""
    props = torch.cuda.get_device_properties(device.index or 0)
    return f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"


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
