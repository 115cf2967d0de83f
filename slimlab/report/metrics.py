"""What a report reads from a record, defined once: each metric with its label and unit (latencies per batch size
included), the latency states, the data set and device of a run, the spread over replicates and how many runs an aggregate holds."""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Callable, Iterable

from slimlab.report.study import StudyRun

# The one spelling of a latency in a record's metrics (`latency_b64_median_ms`): every reader goes through these.
LATENCY_KEY = re.compile(r"latency_b(\d+)_median_ms$")


def latency_key(batch: int) -> str:
    """The record's key of the median latency at `batch` images."""
    return f"latency_b{batch}_median_ms"


def latency_batches(metrics: Iterable[dict], configs: Iterable[dict] = ()) -> list[int]:
    """Batch sizes with a latency in any of `metrics`, or due in any of `configs` (their measure.batch_sizes)."""
    found = {int(m.group(1)) for ms in metrics for k in ms if (m := LATENCY_KEY.match(k))}
    for config in configs:
        found.update(config.get("measure", {}).get("batch_sizes", []))
    return sorted(found)


@dataclass(frozen=True)
class Metric:
    """A figure read from a run's metrics, in the unit its label names; `read` returns None where it is absent."""

    key: str
    label: str
    read: Callable[[dict], float | None]


def _scaled(key: str, factor: float) -> Callable[[dict], float | None]:
    return lambda m: m[key] * factor if key in m else None


def _top1_change(m: dict) -> float | None:
    return m["top1"] - m["float_top1"] if "top1" in m and "float_top1" in m else None


METRICS = {
    "top1": Metric("top1", "Top-1 accuracy (%)", _scaled("top1", 1)),
    "top1_change": Metric("top1_change", "Top-1 change vs float parent (points)", _top1_change),
    "parent_top1": Metric("parent_top1", "Float parent top-1 (%)", _scaled("float_top1", 1)),
    "size": Metric("size", "Size on disk (MB)", _scaled("model_size_bytes", 1e-6)),
    "payload": Metric("payload", "Weight payload, tensors as stored (MB)", _scaled("weight_payload_bytes", 1e-6)),
    "train_time": Metric("train_time", "Training time (s)", _scaled("total_train_seconds", 1)),
    "quant_sqnr": Metric("quant_sqnr", "Quantization error, SQNR of logits (dB)", _scaled("quant_sqnr_db", 1)),
    "quant_rel_l2": Metric("quant_rel_l2", "Quantization error, rel. L2 of logits", _scaled("quant_rel_l2", 1)),
    "sparsity": Metric("sparsity", "Sparsity of pruned layers (%)", _scaled("prune_sparsity", 100)),
    "nonzero_params": Metric("nonzero_params", "Non-zero parameters (M)", _scaled("nonzero_params", 1e-6)),
    "macs": Metric("macs", "MACs per image (M)", _scaled("macs", 1e-6)),
    "nonzero_macs": Metric("nonzero_macs", "MACs with a non-zero weight (M)", _scaled("prune_nonzero_macs_after", 1e-6)),
    "sparse_size": Metric("sparse_size", "Sparse size, bitmask + non-zeros (MB)", _scaled("prune_sparse_bytes", 1e-6)),
    "energy": Metric("energy", "Training energy (J)", _scaled("train_energy_j", 1)),
}


def latency_metric(batch: int) -> Metric:
    """The median latency at `batch` images, as the metric `latency_b{batch}`."""
    return Metric(f"latency_b{batch}", f"Latency, batch {batch}, median (ms)", _scaled(latency_key(batch), 1))


def inference_energy_metric(batch: int) -> Metric:
    """Millijoules per batch of `batch` images (RAPL or NVML, measured after the latency), as `energy_b{batch}`."""
    return Metric(f"energy_b{batch}", f"Inference energy, batch {batch} (mJ)", _scaled(f"energy_b{batch}_mj", 1))


def metric(key: str) -> Metric:
    """A metric by its key (`size`, `latency_b1`, `energy_b1`, ...); an unknown key is refused with the known ones."""
    match = re.fullmatch(r"(latency|energy)_b(\d+)", key)
    if match:
        return (latency_metric if match.group(1) == "latency" else inference_energy_metric)(int(match.group(2)))
    if key not in METRICS:
        raise ValueError(f"unknown metric '{key}'; known: latency_bN, energy_bN, {', '.join(METRICS)}")
    return METRICS[key]


def batch_sizes(runs: list[StudyRun]) -> list[int]:
    """Batch sizes with a latency measured, or due, in any of the runs."""
    return latency_batches((r.metrics for r in runs), (r.record.config for r in runs if r.record))


def latency_pending(record) -> bool:
    """A done run whose latency is left for the study's latency stage (timed alone, later)."""
    return record.notes.get("latency_status") == "pending"


def latency_noisy(record) -> bool:
    """A run whose latencies were timed while the machine was busy with other work."""
    return bool(record.notes.get("latency_noisy"))


def latency_state(run: StudyRun, batch: int) -> str:
    """`measured`, `noisy`, `pending` (not yet timed) or `missing` (a run not done, or never timed)."""
    if run.status != "done":
        return "missing"
    if latency_pending(run.record):
        return "pending"
    if latency_key(batch) not in run.metrics:
        return "missing"
    return "noisy" if latency_noisy(run.record) else "measured"


def per_device(m: Metric) -> bool:
    """A latency or an inference energy: a figure of the device it was measured on, taken in the latency stage."""
    return m.key.startswith(("latency_b", "energy_b"))


def latency_batch(m: Metric) -> int | None:
    """The batch size of a latency metric (`latency_b16` -> 16), None for any other."""
    match = re.fullmatch(r"latency_b(\d+)", m.key)
    return int(match.group(1)) if match else None


def averaged(runs: list[StudyRun], m: Metric) -> list[StudyRun]:
    """The runs an aggregate of `m` averages: for a latency, those timed alone, or the noisy ones only where no run was
    (7.44 ms under load beside 0.72 ms alone made "4.08 ± 4.75"); for any other metric, all of them."""
    batch = latency_batch(m)
    if batch is None:
        return runs
    states = [latency_state(r, batch) for r in runs]
    return [r for r, s in zip(runs, states) if s == "measured"] or [r for r, s in zip(runs, states) if s == "noisy"]


def device_of(run: StudyRun) -> str:
    return run.record.env.get("device", "unknown device") if run.record else "unknown device"


def dataset_of(run: StudyRun) -> str:
    return run.record.config.get("data", {}).get("name", "unknown data") if run.record else "unknown data"


def joined(values) -> str:
    return ", ".join(dict.fromkeys(values)) or "none"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def values_of(runs: list[StudyRun], m: Metric) -> list[float]:
    """The metric of each done run that has it."""
    return [v for r in runs if (v := m.read(r.metrics)) is not None]


def sample_size(runs: list[StudyRun], used: int) -> str:
    """`n=2, 1 failed`: how many runs an aggregate averages, and how many of its configuration's `runs` failed."""
    failed = sum(r.status == "failed" for r in runs)
    return f"n={used}" + (f", {failed} failed" if failed else "")


def shortfall(label: str, runs: list[StudyRun], used: int) -> str | None:
    """`int8 (n=2 of 3, 1 failed)` where an aggregate averages fewer runs than its configuration planned, else None."""
    if used >= len(runs):
        return None
    failed, pending = sum(r.status == "failed" for r in runs), sum(r.status not in ("done", "failed") for r in runs)
    why = [f"{failed} failed"] * bool(failed) + [f"{pending} not done"] * bool(pending)
    unmeasured = len(runs) - used - failed - pending
    why += [f"{unmeasured} without the figure"] * bool(unmeasured)
    return f"{label} (n={used} of {len(runs)}, {', '.join(why)})"
