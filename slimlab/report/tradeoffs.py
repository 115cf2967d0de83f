"""Trade-off figures: Pareto fronts of accuracy against size, latency per batch size and device, and energy; accuracy
against sparsity per pruning schedule, with the dense parent as a line. One point per configuration (mean over seeds)."""
from __future__ import annotations

from dataclasses import dataclass

from slimlab.report import fields
from slimlab.report.fields import METRICS, Metric
from slimlab.report.pareto import non_dominated
from slimlab.report.references import reference_series
from slimlab.report.spec import Chart, Series, Skipped
from slimlab.report.study import Study, StudyRun

FRONT, DOMINATED = "#d62728", "#7f7f7f"
TOP1 = METRICS["top1"]


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    y_std: float
    flag: str = ""  # e.g. "noisy latency"


def subtitle(runs: list[StudyRun]) -> str:
    done = [r for r in runs if r.record]
    return f"data: {fields.joined(map(fields.dataset, done))} (test set) · device: {fields.joined(map(fields.device, done))}"


def accuracy_title(runs: list[StudyRun]) -> str:
    return f"Top-1 accuracy on {fields.joined(fields.dataset(r) for r in runs if r.record)} test set (%)"


def _points(groups: dict[str, list[StudyRun]], x: Metric, usable) -> tuple[list[Point], list[str]]:
    """One point per configuration, from its runs that `usable` accepts. Configurations with no done run, or whose
    done runs lack a value, are named with why; those `usable` turned away are the caller's to explain."""
    points, left_out = [], []
    for label, runs in groups.items():
        chosen = [r for r in runs if r.status == "done" and usable(r)]
        xs, ys = fields.values(chosen, x), fields.values(chosen, TOP1)
        if xs and ys:
            y, std = fields.mean_std(ys)
            flag = _flag(chosen) if x.key.startswith("latency") else ""
            points.append(Point(label, fields.mean_std(xs)[0], y, std or 0.0, flag))
        elif not any(r.status == "done" for r in runs):
            left_out.append(f"{label} ({fields.joined(r.failure or r.status for r in runs)})")
        elif chosen:
            left_out.append(f"{label} (not measured)")
    return points, left_out


def _flag(runs: list[StudyRun]) -> str:
    return "noisy latency" if any(r.record.notes.get("latency_noisy") for r in runs) else ""


def _front_series(points: list[Point]) -> list[Series]:
    front = set(non_dominated([(p.x, p.y) for p in points], maximize=(False, True)))
    on = sorted((points[i] for i in front), key=lambda p: p.x)
    off = [p for i, p in enumerate(points) if i not in front]
    def series(name, chosen, **style):
        return Series(name, [p.x for p in chosen], [p.y for p in chosen], error_y=[p.y_std for p in chosen],
                      hover=[f"{p.label} {p.flag}".strip() for p in chosen], **style)
    return [series("Pareto front (non-dominated)", on, mode="lines+markers", color=FRONT, labels=[p.label + (" (noisy)" if p.flag else "") for p in on]),
            series("dominated", off, color=DOMINATED)]


def pareto_chart(key: str, study: Study, x: Metric, x_title: str, references: list[dict], usable=lambda r: True) -> Chart | Skipped:
    """Accuracy against `x`, with the non-dominated configurations marked and labelled."""
    title = f"Pareto front: accuracy vs {x.label.split(' (')[0].lower()}"
    points, left_out = _points(study.groups(), x, usable)
    if not points:
        return Skipped(key, title, f"No run in the store has both a top-1 accuracy and a {x.label}.")
    runs = [r for r in study.runs if usable(r)]
    note = f"Not plotted: {'; '.join(left_out)}." if left_out else ""
    if any(p.flag for p in points):
        note += " '(noisy)' after a label: its latency was flagged as noisy when measured."
    series = _front_series(points) + reference_series(references, x.key)
    return Chart(key, title, subtitle(runs), x_title, accuracy_title(runs), series, note.strip())


def latency_charts(study: Study, references: list[dict]) -> list[Chart | Skipped]:
    """One Pareto front per batch size and device: latencies on two devices are not comparable."""
    charts = []
    for batch in fields.batch_sizes(study.runs):
        m = fields.latency_metric(batch)
        devices = sorted({fields.device(r) for r in study.done()}) or ["unknown device"]
        for dev in devices:
            def usable(r, dev=dev, batch=batch):
                return fields.device(r) == dev and fields.latency_state(r, batch) in ("measured", "noisy")
            chart = pareto_chart(f"pareto_latency_b{batch}_{dev.replace(':', '')}", study, m, f"{m.label} on {dev}", references, usable)
            pending = [r.label for r in study.done() if fields.latency_state(r, batch) == "pending"]
            charts.append(_with_pending(chart, pending))
    return charts or [Skipped("pareto_latency", "Pareto front: accuracy vs latency", "No run in the store has a latency.")]


def _with_pending(chart: Chart | Skipped, pending: list[str]) -> Chart | Skipped:
    if not pending:
        return chart
    sentence = f"Latency pending (not yet measured alone), not plotted: {', '.join(pending)}."
    if isinstance(chart, Skipped):
        return Skipped(chart.key, chart.title, f"{chart.reason} {sentence}")
    return Chart(**{**chart.__dict__, "note": f"{chart.note} {sentence}".strip()})


def _prune_step(run: StudyRun) -> dict | None:
    steps = [s for s in run.record.config.get("steps", []) if s.get("kind") == "prune"] if run.record else []
    return steps[-1] if steps else None


def schedule_name(step: dict) -> str:
    """`l1 iterative x5, weight rewind to epoch 1, control reinit`: what the accuracy-vs-sparsity lines compare."""
    rounds = step.get("rounds", 1)
    schedule = "one-shot" if step.get("schedule", "oneshot") == "oneshot" or rounds == 1 else f"{step['schedule']} x{rounds}"
    after = step.get("after_round", "finetune").replace("_", " ")
    after += f" to epoch {step.get('rewind_epoch', 0)}" if after == "weight rewind" else ""
    control = step.get("control", "none")
    return f"{step.get('method', 'l1')} {schedule}, {after}" + (f", control {control}" if control != "none" else "")


def sparsity_chart(study: Study, references: list[dict]) -> Chart | Skipped:
    """Accuracy against sparsity, one line per pruning schedule and control, the spread over seeds as error bars."""
    key, title = "accuracy_vs_sparsity", "Accuracy vs sparsity"
    pruned = [r for r in study.done() if _prune_step(r)]
    if not pruned:
        return Skipped(key, title, "No pruned run in the store: nothing to draw against sparsity.")
    series = []
    for name in dict.fromkeys(schedule_name(_prune_step(r)) for r in pruned):
        ids = {r.id for r in pruned if schedule_name(_prune_step(r)) == name}
        groups = {label: [r for r in runs if r.id in ids] for label, runs in study.groups().items()}
        points = sorted(_points({k: v for k, v in groups.items() if v}, METRICS["sparsity"], lambda r: True)[0], key=lambda p: p.x)
        series.append(Series(name, [p.x for p in points], [p.y for p in points], mode="lines+markers",
                             error_y=[p.y_std for p in points], hover=[p.label for p in points]))
    parent, _ = fields.mean_std([r.metrics.get("float_top1") for r in pruned])
    if parent == parent:  # NaN when no pruned run recorded its parent's accuracy
        series.append(Series(f"dense parent ({parent:.2f}%)", [0, 100], [parent, parent], mode="lines", dash="dash", color="black"))
    return Chart(key, title, subtitle(pruned), METRICS["sparsity"].label, accuracy_title(pruned),
                 series + reference_series(references, "sparsity"))
