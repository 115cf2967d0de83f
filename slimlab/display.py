"""Runs as people read them: the run table of `slimlab runs` and one run's details for `slimlab show`."""
from __future__ import annotations

import textwrap

import yaml

# Shown first by `show`, in this order, where present; every other metric follows, grouped by its prefix.
HEADLINE = ("top1", "top5", "val_top1", "float_top1", "model_size_bytes", "params", "nonzero_params", "sparsity", "macs",
            "train_seconds", "total_train_seconds", "train_energy_j")
STEP_PREFIXES = ("quant", "prune")
FLAG = "*"
FLAG_LEGEND = f"{FLAG} timed while the machine was busy with other work (notes.latency_noisy); `slimlab show ID` says how"


def flagged_metrics(record) -> set[str]:
    """Metric keys whose figures were timed under load: notes.latency_flagged, or every latency figure of a run
    that says only `latency_noisy` (recorded before the flag list existed)."""
    flagged = set(record.notes.get("latency_flagged") or [])
    if record.notes.get("latency_noisy") and not flagged:
        flagged = {k for k in record.metrics if k.startswith(("latency_b", "throughput_b"))}
    return flagged


def run_table(records) -> list[str]:
    """One line per run: id, status, model, data, top-1, size, batch-1 latency (starred when timed under load), name."""
    lines = [f"{'id':16}  {'status':8}  {'model':18}  {'data':14}  {'top1':>6}  {'size MB':>8}  {'b1 ms':>8}  name"]
    any_flag = False
    for r in records:
        m = r.metrics
        top1 = f"{m['top1']:.2f}" if "top1" in m else "-"
        size = f"{m['model_size_bytes'] / 1e6:.2f}" if "model_size_bytes" in m else "-"
        lat = f"{m['latency_b1_median_ms']:.2f}" if "latency_b1_median_ms" in m else "-"
        if "latency_b1_median_ms" in flagged_metrics(r):
            lat, any_flag = lat + FLAG, True
        lines.append(f"{r.id:16}  {r.status:8}  {r.config['model']['name'][:18]:18}  {r.config['data']['name'][:14]:14}  "
                     f"{top1:>6}  {size:>8}  {lat:>8}  {r.name}")
    if any_flag:
        lines.append(FLAG_LEGEND)
    return lines


def _value(key: str, value) -> str:
    if key == "model_size_bytes" and isinstance(value, int):
        return f"{value:,} ({value / 1e6:.3f} MB)"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def deployable_summary(entries: list[dict]) -> str:
    """notes.deployable_files in one sentence: each file and what it takes, the input, the normalization, the classes."""
    try:
        first = entries[0]
        files = "; ".join(f"{e['file']} takes {e['input']['dtype']}" + (" raw pixels" if e["normalization"]["inside_the_file"] else
                          " normalized pixels") for e in entries)
        norm, classes = first["normalization"], first["output"]["classes"]
        named = ", ".join(classes[:10]) + (f" and {len(classes) - 10} more" if len(classes) > 10 else "")
        shape = "x".join(str(d) for d in first["input"]["shape"][1:])
        return (f"{files}; NCHW {shape} {first['input']['channels']}; mean {[round(v, 4) for v in norm['mean']]}, std "
                f"{[round(v, 4) for v in norm['std']]} (of 1); {len(classes)} classes: {named}; the JSON beside each file says all")
    except (KeyError, IndexError, TypeError):  # a record written by other code: shown as it is
        return str(entries)


def record_lines(record, full: bool = False) -> list[str]:
    """A run: status, headline figures, the other metrics by group; with `full`, notes, config and environment."""
    lines = [f"run {record.id}  status: {record.status}  {record.name}"]
    if record.error:
        lines.append(f"  reason ({record.failure}): {record.error}")
    if record.status == "stale":
        lines.append(f"  stale: its process ({record.host}, pid {record.pid}) is gone; the next `slimlab study` resumes it")
    for line in record.notes.get("coverage") or []:
        lines.append(f"  coverage: {line}")
    flagged = flagged_metrics(record)
    metrics = record.metrics
    headline = [k for k in HEADLINE if k in metrics] + sorted(k for k in metrics if k.startswith(("latency_b", "throughput_b")))
    rest = sorted(k for k in metrics if k not in headline)

    def metric_line(key: str) -> str:
        mark = f"   {FLAG} noisy: timed under load" if key in flagged else ""
        return f"  {key:32} {_value(key, metrics[key])}{mark}"

    if headline:
        lines += ["", "figures:"] + [metric_line(k) for k in headline]
    groups: dict[str, list[str]] = {}
    for key in rest:  # a step's figures together (quant_*, prune_*), then the rest
        prefix = key.split("_", 1)[0]
        groups.setdefault(f"{prefix} step" if prefix in STEP_PREFIXES else "other figures", []).append(key)
    for group in sorted(groups, key=lambda g: g == "other figures"):
        lines += ["", f"{group}:"] + [metric_line(k) for k in groups[group]]
    if not full:
        return lines
    notes = {k: v for k, v in record.notes.items() if v not in ("", [], None)}
    if notes:
        lines += ["", "notes (how each figure was measured):"]
        for key, text in sorted(notes.items()):
            if key == "deployable_files":
                text = deployable_summary(text)
            text = ", ".join(map(str, text)) if isinstance(text, list) else str(text)
            lines += textwrap.wrap(f"{key}: {text}", width=110, initial_indent="  ", subsequent_indent="      ")
    for title, section in (("config", record.config), ("environment", record.env)):
        if section:
            lines += ["", f"{title}:"] + ["  " + line for line in yaml.safe_dump(section, sort_keys=True, width=110).splitlines()]
    return lines
