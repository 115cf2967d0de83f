"""A study's tables: the seed deck's comparison (rows are figures, columns are the study's configurations, mean ± std
over seeds) and one row per run; each as CSV, Markdown or HTML. Failed and pending runs are shown, never dropped."""
from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass

from slimlab.report import fields
from slimlab.report.fields import METRICS, Metric
from slimlab.report.study import Study, StudyRun

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


def spread(runs: list[StudyRun], m: Metric) -> str:
    """`mean ± std (n=k)` over the runs that have the metric, the value alone for one run, '' for none."""
    found = fields.values(runs, m)
    mean, std = fields.mean_std(found)
    if not found:
        return ""
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)} (n={len(found)})"


def status(runs: list[StudyRun]) -> str:
    """`2 done, 1 failed (diverged), 1 pending`: every run of a column is counted."""
    counts: dict[str, int] = {}
    for r in runs:
        word = f"failed ({r.failure})" if r.failure else r.status
        counts[word] = counts.get(word, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in counts.items())


def latency_cell(runs: list[StudyRun], batch: int) -> str:
    """The spread of the measured latencies, or why there is none: pending latencies are never shown as missing."""
    states = [fields.latency_state(r, batch) for r in runs]
    cell = spread([r for r, s in zip(runs, states) if s in ("measured", "noisy")], fields.latency_metric(batch))
    flags = [f"{states.count(s)} {s}" for s in ("pending", "noisy") if s in states]
    return " ".join([cell, f"({', '.join(flags)})" if flags else ""]).strip()


def comparison_table(study: Study) -> Table:
    """Rows: accuracy, size, training and inference time (with the device), quantization error, pruning figures."""
    groups = study.groups()
    columns = list(groups.values())
    rows = [["Runs", *(status(g) for g in columns)]]
    rows += [[METRICS[k].label, *(spread(g, METRICS[k]) for g in columns)] for k in COMPARISON_ROWS[:4]]
    rows += [[f"Inference time, batch {b}, median (ms)", *(latency_cell(g, b) for g in columns)]
             for b in fields.batch_sizes(study.runs)]
    rows.append(["Inference device", *(fields.joined(fields.device(r) for r in g if r.record) for g in columns)])
    rows += [[METRICS[k].label, *(spread(g, METRICS[k]) for g in columns)] for k in COMPARISON_ROWS[4:]]
    rows = [row for row in rows if any(row[1:])]  # a figure no run has (no pruning in the study, say) is left out
    return Table("comparison", f"Comparison: {study.name}", ["", *groups], rows)


def _run_row(run: StudyRun, batches: list[int]) -> list[str]:
    error = (run.record.error or "") if run.record else ""
    latencies = [fmt(fields.latency_metric(b).read(run.metrics)) or fields.latency_state(run, b) for b in batches]
    return [run.id[:8], run.label, run.status, run.failure or "", fields.dataset(run), fields.device(run),
            *(fmt(METRICS[k].read(run.metrics)) for k in RUN_COLUMNS), *latencies, error]


def runs_table(study: Study) -> Table:
    """One row per run the study lists, with its status, failure class and error."""
    batches = fields.batch_sizes(study.runs)
    headers = ["id", "label", "status", "failure", "data", "device", *(METRICS[k].label for k in RUN_COLUMNS),
               *(fields.latency_metric(b).label for b in batches), "error"]
    return Table("runs", f"Runs: {study.name}", headers, [_run_row(r, batches) for r in study.runs])


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
