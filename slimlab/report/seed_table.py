"""The study deck's table layout from the store: rows are metrics, columns are method x dataset."""
from __future__ import annotations

from slimlab.report.study import Study
from slimlab.store import RunRecord

# (row label, how to read it from a run's metrics); the deck's rows, then the error in dB as a second reading.
SEED_ROWS = [
    ("Accuracy (top-1 %)", lambda m: m.get("top1")),
    ("Model size (MB on disk)", lambda m: m["model_size_bytes"] / 1e6 if "model_size_bytes" in m else None),
    ("Training time (s)", lambda m: m.get("total_train_seconds")),
    ("Inference time (ms, batch 1)", lambda m: m.get("latency_b1_median_ms")),
    ("Quantization error (rel. L2 of logits)", lambda m: m.get("quant_rel_l2")),
    ("Quantization error (SQNR dB)", lambda m: m.get("quant_sqnr_db")),
    ("Top-1 change vs float (points)", lambda m: m["top1"] - m["float_top1"] if "float_top1" in m and "top1" in m else None),
]


def seed_table(study: Study) -> str:
    """A plain-text table: one column per variant and grid point (the dataset shown apart), in the study's order.

    The study's runs come from its manifest, so a run another command made first (the same config under another
    name, e.g. a trained model the study found in the store) is in its column. A study known only by run names
    (`NAME:label`) keeps, per column, the latest run: one run again under a changed config replaces the old one."""
    latest: dict[tuple[str, str], RunRecord] = {}
    for run in study.done():  # in order, so the newest run of a column wins while the column keeps its first place
        label = "/".join(part for part in run.label.split("/") if not part.startswith("data.name="))
        latest[(label or run.variant, run.record.config["data"]["name"])] = run.record
    if not latest:
        return f"no finished runs of study '{study.name}'"
    columns = [(variant, data, r) for (variant, data), r in latest.items()]
    headers = [f"{variant} | {data}" for variant, data, _ in columns]
    width = max(len(label) for label, _ in SEED_ROWS)
    col = max(12, *(len(h) for h in headers))
    lines = [f"{'':{width}}  " + "  ".join(f"{h:>{col}}" for h in headers)]
    for label, read in SEED_ROWS:
        cells = []
        for _, _, r in columns:
            value = read(r.metrics)
            cells.append(f"{'NA':>{col}}" if value is None else f"{value:>{col}.{3 if abs(value) < 10 else 2}f}")
        lines.append(f"{label:{width}}  " + "  ".join(cells))
    # Latencies are comparable only on one device: a float model trained on a GPU is timed there, int8 on the CPU.
    devices = [r.env.get("device", "NA") for _, _, r in columns]
    lines.append(f"{'Inference device':{width}}  " + "  ".join(f"{d:>{col}}" for d in devices))
    return "\n".join(lines)
