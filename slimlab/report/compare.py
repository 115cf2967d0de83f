"""`slimlab compare`: runs side by side as terminal text, headline figures first, then the config keys that differ."""
from __future__ import annotations

import json
import re
from typing import Sequence

from slimlab.report.fields import METRICS, latency_metric
from slimlab.report.study import find_runs
from slimlab.report.tables import fmt
from slimlab.store import RunRecord

__all__ = ["compare_rows", "compare_runs", "config_differences", "find_runs", "flatten"]

_LATENCY = re.compile(r"latency_b(\d+)_median_ms$")
HEADLINE_BEFORE_LATENCY = ["top1", "top1_change", "size"]
HEADLINE_AFTER_LATENCY = ["sparsity", "nonzero_params", "macs", "nonzero_macs", "sparse_size", "quant_sqnr", "quant_rel_l2",
                          "train_time", "energy"]
MAX_CELL = 28  # wider values (a long list in the config) are cut with an ellipsis


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """`{"train": {"lr": 0.1}, "steps": [{"kind": "prune"}]}` -> `{"train.lr": 0.1, "steps.0.kind": "prune"}`: the
    dotted keys `--set` takes. A list of plain values stays one value."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{dotted}.{i}."))
        else:
            flat[dotted] = value
    return flat


IDENTITY = ("kind", "method", "amount")  # what a step is: shown even where only one run has that step


def config_differences(configs: Sequence[dict], ignore: tuple[str, ...] = ("name",)) -> dict[str, list]:
    """The dotted config keys whose value differs between the configs that have them, each with its value per config
    (None where a config lacks the key), in the order the keys first appear. A key only some configs have (a step's
    defaults, in a float run beside a pruned one) is shown only where those differ, or when it says what the step is."""
    flats = [flatten(c) for c in configs]
    keys = [k for k in dict.fromkeys(k for f in flats for k in f) if k not in ignore]
    diff = {}
    for key in keys:
        values = [f.get(key) if key in f else None for f in flats]
        present = [json.dumps(f[key], sort_keys=True, default=str) for f in flats if key in f]
        partial = len(present) < len(flats)
        if len(set(present)) > 1 or (partial and key.rsplit(".", 1)[-1] in IDENTITY):
            diff[key] = values
    return diff


def _batches(records: Sequence[RunRecord]) -> list[int]:
    found = {int(m.group(1)) for r in records for k in r.metrics if (m := _LATENCY.match(k))}
    for r in records:
        found.update(r.config.get("measure", {}).get("batch_sizes", []))
    return sorted(found)


def _latency(record: RunRecord, batch: int) -> str:
    if record.status != "done":
        return ""
    if record.notes.get("latency_status") == "pending":
        return "pending"
    value = latency_metric(batch).read(record.metrics)
    if value is None:
        return ""
    return f"{fmt(value)} (noisy)" if record.notes.get("latency_noisy") else fmt(value)


def _metric_row(key: str, records: Sequence[RunRecord]) -> list[str]:
    m = METRICS[key]
    return [m.label, *(fmt(m.read(r.metrics)) if r.status == "done" else "" for r in records)]


def _value(value) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _status(record: RunRecord) -> str:
    return f"failed ({record.failure or 'error'})" if record.status == "failed" else record.status


def compare_rows(records: Sequence[RunRecord]) -> tuple[list[list[str]], list[list[str]]]:
    """(figures, config) rows, each `[label, value per run]`: headline figures with the inference device, figures no
    run has left out; then the config keys that differ between the runs."""
    figures = [["Name", *(r.name or "" for r in records)], ["Status", *(_status(r) for r in records)]]
    if any(r.error for r in records):
        figures.append(["Error", *(r.error or "" for r in records)])
    figures.append(["Data set", *(r.config.get("data", {}).get("name", "") for r in records)])
    figures += [_metric_row(k, records) for k in HEADLINE_BEFORE_LATENCY]
    figures += [[latency_metric(b).label, *(_latency(r, b) for r in records)] for b in _batches(records)]
    # Latencies compare only on one device: a float model trained on a GPU is timed there, int8 on the CPU.
    figures.append(["Inference device", *(r.env.get("device", "") if r.status == "done" else "" for r in records)])
    figures += [_metric_row(k, records) for k in HEADLINE_AFTER_LATENCY]
    figures = [row for row in figures if any(row[1:])]
    config = [[key, *map(_value, values)] for key, values in config_differences([r.config for r in records]).items()]
    return figures, config


def _cut(text: str, width: int = MAX_CELL) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def compare_runs(records: Sequence[RunRecord]) -> str:
    """A side-by-side table of runs for the terminal: one column per run (headed by its id), headline figures first,
    then the config keys that differ between them."""
    if not records:
        return "no runs to compare"
    figures, config = compare_rows(records)
    header = ["", *(r.id[:8] for r in records)]
    rows = [header, *figures]
    if config:
        rows += [["Config (keys that differ)", *([""] * len(records))], *config]
    elif len(records) > 1:
        rows.append(["Config", "the same in every run", *([""] * (len(records) - 1))])
    cells = [[_cut(c) if i else c for i, c in enumerate(row)] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"{row[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row[1:], widths[1:])) for row in cells]
    rule = "-" * len(lines[0])
    lines.insert(1, rule)
    if config:
        lines.insert(len(figures) + 2, rule)
    return "\n".join(line.rstrip() for line in lines)
