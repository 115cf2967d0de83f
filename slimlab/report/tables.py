"""A study's tables: the comparison (rows are figures, columns are the study's configurations, mean ± std over seeds),
one row per run, and the seed deck's layout; runs side by side for `slimlab compare`. Each as CSV, Markdown, HTML or
terminal text. Failed and pending runs are shown, never dropped."""
from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass
from typing import Sequence

from slimlab.report.metrics import (METRICS, Metric, averaged, batch_sizes, latency_noisy, latency_pending, dataset_of, device_of, joined, latency_batches,
                                    latency_metric, latency_state, mean_std, sample_size, values_of)
from slimlab.report.study import Study, StudyRun, flatten
from slimlab.store import RunRecord


COMPARISON_ROWS = ["top1", "top1_change", "size", "train_time", "quant_sqnr", "quant_rel_l2", "sparsity", "macs",
                   "nonzero_macs", "sparse_size", "energy"]
RUN_COLUMNS = ["top1", "top1_change", "size", "sparsity", "quant_sqnr", "macs", "train_time"]


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def spread(runs: list[StudyRun], m: Metric, among: list[StudyRun] | None = None) -> str:
    """`mean ± std (n=2, 1 failed)` over the runs (of `among`, default all) that have the metric, failures counted
    over all `runs` of the configuration; the value alone for a configuration of one run; '' for none."""
    found = values_of(runs if among is None else among, m)
    mean, std = mean_std(found)
    if not found:
        return ""
    cell = fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"
    return cell if len(runs) == 1 else f"{cell} ({sample_size(runs, len(found))})"


def status(runs: list[StudyRun]) -> str:
    """`2 done, 1 failed (diverged), 1 pending`: every run of a column is counted."""
    counts: dict[str, int] = {}
    for r in runs:
        word = f"failed ({r.failure})" if r.failure else r.status
        counts[word] = counts.get(word, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in counts.items())


def latency_cell(runs: list[StudyRun], batch: int) -> str:
    """The spread of the measured latencies, or why there is none: pending latencies are never shown as missing."""
    states = [latency_state(r, batch) for r in runs]
    clean = [r for r, s in zip(runs, states) if s == "measured"]
    noisy = [r for r, s in zip(runs, states) if s == "noisy"]
    # A figure timed under load is never averaged with clean ones (metrics.averaged): it is left out and counted; only
    # when no clean figure exists are the noisy ones shown, and said to be.
    cell = spread(runs, latency_metric(batch), among=averaged(runs, latency_metric(batch)))
    flags = [f"{states.count('pending')} pending"] if "pending" in states else []
    if noisy:
        flags.append(f"{len(noisy)} noisy left out" if clean else f"all {len(noisy)} noisy")
    return " ".join([cell, f"({', '.join(flags)})" if flags else ""]).strip()


def comparison_table(study: Study) -> Table:
    """Rows: accuracy, size, training and inference time (with the device), quantization error, pruning figures."""
    groups = study.groups()
    columns = list(groups.values())
    rows = [["Runs", *(status(g) for g in columns)]]
    rows += [[METRICS[k].label, *(spread(g, METRICS[k]) for g in columns)] for k in COMPARISON_ROWS[:4]]
    rows += [[f"Inference time, batch {b}, median (ms)", *(latency_cell(g, b) for g in columns)]
             for b in batch_sizes(study.runs)]
    rows.append(["Inference device", *(joined(device_of(r) for r in g if r.record) for g in columns)])
    rows += [[METRICS[k].label, *(spread(g, METRICS[k]) for g in columns)] for k in COMPARISON_ROWS[4:]]
    rows = [row for row in rows if any(row[1:])]  # a figure no run has (no pruning in the study, say) is left out
    return Table("comparison", f"Comparison: {study.name}", ["", *groups], rows)


def _run_row(run: StudyRun, batches: list[int]) -> list[str]:
    error = (run.record.error or "") if run.record else ""
    latencies = [fmt(latency_metric(b).read(run.metrics)) or latency_state(run, b) for b in batches]
    return [run.id[:8], run.label, run.status, run.failure or "", dataset_of(run), device_of(run),
            *(fmt(METRICS[k].read(run.metrics)) for k in RUN_COLUMNS), *latencies, error]


def runs_table(study: Study) -> Table:
    """One row per run the study lists, with its status, failure class and error."""
    batches = batch_sizes(study.runs)
    headers = ["id", "label", "status", "failure", "data", "device", *(METRICS[k].label for k in RUN_COLUMNS),
               *(latency_metric(b).label for b in batches), "error"]
    return Table("runs", f"Runs: {study.name}", headers, [_run_row(r, batches) for r in study.runs])


def coverage_table(study: Study) -> Table:
    """Per variant, what its compression steps covered: layers int8 and why others stayed float, channel groups pruned
    (the `coverage` notes of its first finished run; every seed of a variant compresses the same layers)."""
    rows = []
    for variant, runs in study.groups().items():
        done = next((r for r in runs if r.record and r.record.status == "done"), None)
        for line in (done.record.notes.get("coverage") or []) if done else []:
            step, _, what = line.partition(": ")
            rows.append([variant, step, what])
        failed = next((r for r in runs if r.record and r.record.status == "failed"), None) if done is None else None
        if failed is not None and failed.record.config.get("steps"):  # a variant no seed finished: why, not nothing
            steps = ", ".join(f"{s.get('kind')} ({s.get('method', '')}{', ' + s['engine'] if s.get('engine') else ''})"
                              for s in failed.record.config["steps"])
            reason = ((failed.record.error or "").strip().splitlines() or ["no reason recorded"])[0][:300]
            rows.append([variant, steps, f"failed ({failed.failure}): {reason}"])
    return Table("coverage", f"Coverage: {study.name}", ["variant", "step", "what it compressed, and what not and why"], rows)


def build_tables(study: Study) -> list[Table]:
    """Every table of a report, in page order: a new table is a function returning a `Table` and an entry here."""
    coverage = coverage_table(study)  # only where a step compressed something
    return [comparison_table(study), *([coverage] if coverage.rows else []), runs_table(study)]


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.headers)
    writer.writerows(table.rows)
    return out.getvalue()


def to_markdown(table: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    return "\n".join([line(table.headers), line(["---"] * len(table.headers)), *map(line, table.rows)]) + "\n"


def to_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- The seed deck's table: rows are metrics, columns are method x dataset --------------------------------------------


# (row label, metric): the deck's rows under the deck's own labels, then the error in dB as a second reading.
SEED_ROWS = [
    ("Accuracy (top-1 %)", METRICS["top1"]),
    ("Model size (MB on disk)", METRICS["size"]),
    ("Training time (s)", METRICS["train_time"]),
    ("Inference time (ms, batch 1)", latency_metric(1)),
    ("Quantization error (rel. L2 of logits)", METRICS["quant_rel_l2"]),
    ("Quantization error (SQNR dB)", METRICS["quant_sqnr"]),
    ("Top-1 change vs float (points)", METRICS["top1_change"]),
]


def seed_table(study: Study) -> str:
    """A plain-text table: one column per variant and grid point (the dataset shown apart), in the study's order; each
    column is one run (n=1), and the runs not done are named under it, so a failed seed is never silently missing.

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
    for label, metric in SEED_ROWS:
        cells = []
        for _, _, r in columns:
            value = metric.read(r.metrics)
            cells.append(f"{'NA':>{col}}" if value is None else f"{value:>{col}.{3 if abs(value) < 10 else 2}f}")
        lines.append(f"{label:{width}}  " + "  ".join(cells))
    # Latencies are comparable only on one device: a float model trained on a GPU is timed there, int8 on the CPU.
    devices = [r.env.get("device", "NA") for _, _, r in columns]
    lines.append(f"{'Inference device':{width}}  " + "  ".join(f"{d:>{col}}" for d in devices))
    return "\n".join(lines + _not_shown(study))


def _not_shown(study: Study) -> list[str]:
    """`Not shown: 1 failed (static/seed=2: diverged), 1 pending (later/seed=0)`, or nothing when every run is done."""
    missing: dict[str, list[str]] = {}
    for run in study.runs:
        if run.status != "done":
            word = "failed" if run.failure else run.status
            missing.setdefault(word, []).append(f"{run.label}: {run.failure}" if run.failure else run.label)
    said = [f"{len(labels)} {word} ({', '.join(labels)})" for word, labels in missing.items()]
    return [f"Not shown: {'; '.join(said)}"] if said else []


# --- `slimlab compare`: runs side by side, headline figures first, then the config keys that differ -------------------



HEADLINE_BEFORE_LATENCY = ["top1", "top1_change", "size"]
HEADLINE_AFTER_LATENCY = ["sparsity", "nonzero_params", "macs", "nonzero_macs", "sparse_size", "quant_sqnr", "quant_rel_l2",
                          "train_time", "energy"]
MAX_CELL = 28  # wider values (a long list in the config) are cut with an ellipsis


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


def _latency(record: RunRecord, batch: int) -> str:
    if record.status != "done":
        return ""
    if latency_pending(record):
        return "pending"
    value = latency_metric(batch).read(record.metrics)
    if value is None:
        return ""
    return f"{fmt(value)} (noisy)" if latency_noisy(record) else fmt(value)


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
    batches = latency_batches((r.metrics for r in records), (r.config for r in records))
    figures += [[latency_metric(b).label, *(_latency(r, b) for r in records)] for b in batches]
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
