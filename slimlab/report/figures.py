"""Which figures a study gets, as plain data (drawn the same by the HTML page and the PNG files): Pareto fronts of
accuracy against size, latency per batch size and device, and energy; accuracy against sparsity per pruning schedule;
training curves; per-layer sparsity and quantization error of one run; parallel coordinates; reference points from a
CSV. A figure the store cannot draw is a `Skipped` with the sentence that says why."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from slimlab.errors import ConfigError
from slimlab.report.metrics import (METRICS, Metric, averaged, batch_sizes, latency_noisy, dataset_of, device_of, joined, latency_metric,
                                    latency_state, mean_std, sample_size, shortfall, values_of)
from slimlab.report.study import Study, StudyRun


# --- Figures as plain data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """Points or a line. `labels` are drawn beside the points; `hover` is shown on pointing (HTML only)."""

    name: str
    x: list
    y: list
    mode: str = "markers"  # markers | lines | lines+markers | bar
    labels: list[str] | None = None
    hover: list[str] | None = None
    error_y: list[float] | None = None
    color: str | None = None
    symbol: str = "circle"  # circle | circle-open | star | diamond | x
    dash: str = "solid"  # solid | dash | dot
    width: float = 2.0
    opacity: float = 1.0


@dataclass(frozen=True)
class Chart:
    """An x-y figure. `subtitle` names the data set and the device; `note` is a sentence shown under it."""

    key: str
    title: str
    subtitle: str
    x_title: str
    y_title: str
    series: list[Series]
    note: str = ""


@dataclass(frozen=True)
class Dimension:
    """An axis of a parallel-coordinates figure; `ticks` name the codes of a categorical axis."""

    label: str
    values: list[float]
    ticks: dict[float, str] | None = None


@dataclass(frozen=True)
class Parallel:
    key: str
    title: str
    subtitle: str
    dimensions: list[Dimension]
    color: list[float]
    color_title: str
    note: str = ""


@dataclass(frozen=True)
class Skipped:
    """A figure the store has no data for, and the sentence that says why."""

    key: str
    title: str
    reason: str


Figure = Chart | Parallel


@dataclass
class Figures:
    drawn: list[Figure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, item: Figure | Skipped | list) -> None:
        for one in item if isinstance(item, list) else [item]:
            (self.skipped if isinstance(one, Skipped) else self.drawn).append(one)


# --- The non-dominated set --------------------------------------------------------------------------------------------


def _usable(point: Sequence[float | None]) -> bool:
    return all(v is not None and not math.isnan(v) for v in point)


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    better = [(x > y) if up else (x < y) for x, y, up in zip(a, b, maximize)]
    worse = [(x < y) if up else (x > y) for x, y, up in zip(a, b, maximize)]
    return any(better) and not any(worse)


def non_dominated(points: Sequence[Sequence[float | None]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points on the Pareto front. Equal points are all on it (neither beats the other); a point with
    a missing objective (None or NaN) is on no front and dominates nothing."""
    usable = [i for i, p in enumerate(points) if _usable(p)]
    return [i for i in usable if not any(dominates(points[j], points[i], maximize) for j in usable if j != i)]


# --- Reference points from a CSV the user gives (published results, say), drawn on the figures whose axes they have ---


COLUMNS = {"size": "size_mb", "energy": "energy_j", "sparsity": "sparsity_pct"}


def read_references(path: str | Path) -> list[dict]:
    """Rows of the CSV, numbers as floats and empty cells left out; a file without `label` and `top1` is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such reference file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "top1"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{path}: a reference CSV needs the columns label and top1 (missing: {', '.join(sorted(missing))})")
        return [_row(path, n, row) for n, row in enumerate(reader, start=2)]


def _row(path: Path, line: int, row: dict) -> dict:
    parsed = {"label": row["label"]}
    for key, value in row.items():
        if key != "label" and value not in ("", None):
            try:
                parsed[key] = float(value)
            except ValueError:
                raise ConfigError(f"{path}:{line}: {key}: expected a number, got {value!r}") from None
    return parsed


def reference_series(references: list[dict], x_key: str) -> list[Series]:
    """The references that have this figure's x axis (a metric key: size, latency_b1, ...) and top-1."""
    column = COLUMNS.get(x_key, f"{x_key}_ms")
    rows = [r for r in references if column in r and "top1" in r]
    if not rows:
        return []
    labels = [r["label"] for r in rows]
    return [Series("reference (your CSV)", [r[column] for r in rows], [r["top1"] for r in rows], symbol="star",
                   color="#1f77b4", labels=labels, hover=labels)]


# --- Trade-offs: one point per configuration (mean over seeds) --------------------------------------------------------


FRONT, DOMINATED = "#d62728", "#7f7f7f"
TOP1 = METRICS["top1"]


@dataclass(frozen=True)
class Point:
    """A configuration's mean over its runs; `n` says how many (`n=2, 1 failed`), `short` why fewer than planned."""

    label: str
    x: float
    y: float
    y_std: float
    flag: str = ""  # e.g. "noisy latency"
    n: str = ""
    short: str | None = None

    @property
    def hover(self) -> str:
        return " ".join(filter(None, [f"{self.label} · {self.n}" if self.n else self.label, self.flag]))


def subtitle(runs: list[StudyRun]) -> str:
    done = [r for r in runs if r.record]
    return f"data: {joined(map(dataset_of, done))} (test set) · device: {joined(map(device_of, done))}"


def accuracy_title(runs: list[StudyRun]) -> str:
    return f"Top-1 accuracy on {joined(dataset_of(r) for r in runs if r.record)} test set (%)"


def _points(groups: dict[str, list[StudyRun]], x: Metric, usable) -> tuple[list[Point], list[str]]:
    """One point per configuration, from its runs that `usable` accepts. Configurations with no done run, or whose
    done runs lack a value, are named with why; those `usable` turned away are the caller's to explain."""
    points, left_out = [], []
    for label, runs in groups.items():
        chosen = [r for r in runs if r.status == "done" and usable(r)]
        measured = averaged([r for r in chosen if x.read(r.metrics) is not None and TOP1.read(r.metrics) is not None], x)
        if measured:
            y, std = mean_std(values_of(measured, TOP1))
            flag = _flag(measured) if x.key.startswith("latency") else ""
            n, short = sample_size(runs, len(measured)), shortfall(label, runs, len(measured))
            points.append(Point(label, mean_std(values_of(measured, x))[0], y, std or 0.0, flag, n, short))
        elif not any(r.status == "done" for r in runs):
            left_out.append(f"{label} ({joined(r.failure or r.status for r in runs)})")
        elif chosen:
            left_out.append(f"{label} (not measured)")
    return points, left_out


def _flag(runs: list[StudyRun]) -> str:
    return "noisy latency" if any(latency_noisy(r.record) for r in runs) else ""


def _label(p: Point) -> str:
    """The text beside a point on the front: its n where it averages fewer runs than planned, and a noisy flag."""
    return p.label + (f" ({p.n})" if p.short else "") + (" (noisy)" if p.flag else "")


def _front_series(points: list[Point]) -> list[Series]:
    front = set(non_dominated([(p.x, p.y) for p in points], maximize=(False, True)))
    on = sorted((points[i] for i in front), key=lambda p: p.x)
    off = [p for i, p in enumerate(points) if i not in front]
    def series(name, chosen, **style):
        return Series(name, [p.x for p in chosen], [p.y for p in chosen], error_y=[p.y_std for p in chosen],
                      hover=[p.hover for p in chosen], **style)
    return [series("Pareto front (non-dominated)", on, mode="lines+markers", color=FRONT, labels=[_label(p) for p in on]),
            series("dominated", off, color=DOMINATED)]


def fewer_than_planned(points: list[Point]) -> str:
    """The note under a figure whose points average fewer runs than their configurations planned."""
    short = [p.short for p in points if p.short]
    return f"Fewer runs than planned in the mean: {'; '.join(short)}." if short else ""


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
    note += " " + fewer_than_planned(points)
    series = _front_series(points) + reference_series(references, x.key)
    return Chart(key, title, subtitle(runs), x_title, accuracy_title(runs), series, note.strip())


def latency_charts(study: Study, references: list[dict]) -> list[Chart | Skipped]:
    """One Pareto front per batch size and device: latencies on two devices are not comparable."""
    charts = []
    for batch in batch_sizes(study.runs):
        m = latency_metric(batch)
        devices = sorted({device_of(r) for r in study.done()}) or ["unknown device"]
        for dev in devices:
            def usable(r, dev=dev, batch=batch):
                return device_of(r) == dev and latency_state(r, batch) in ("measured", "noisy")
            chart = pareto_chart(f"pareto_latency_b{batch}_{dev.replace(':', '')}", study, m, f"{m.label} on {dev}", references, usable)
            pending = [r.label for r in study.done() if latency_state(r, batch) == "pending"]
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
    series, drawn = [], []
    for name in dict.fromkeys(schedule_name(_prune_step(r)) for r in pruned):
        ids = {r.id for r in pruned if schedule_name(_prune_step(r)) == name}
        # a configuration's failed and pending runs stay in its group: they are counted, not averaged
        groups = {label: runs for label, runs in study.groups().items() if any(r.id in ids for r in runs)}
        points = sorted(_points(groups, METRICS["sparsity"], lambda r: True)[0], key=lambda p: p.x)
        series.append(Series(name, [p.x for p in points], [p.y for p in points], mode="lines+markers",
                             error_y=[p.y_std for p in points], hover=[p.hover for p in points]))
        drawn += points
    parent, _ = mean_std(values_of(pruned, METRICS["parent_top1"]))
    if parent == parent:  # NaN when no pruned run recorded its parent's accuracy
        series.append(Series(f"dense parent ({parent:.2f}%)", [0, 100], [parent, parent], mode="lines", dash="dash", color="black"))
    return Chart(key, title, subtitle(pruned), METRICS["sparsity"].label, accuracy_title(pruned),
                 series + reference_series(references, "sparsity"), fewer_than_planned(drawn))


# --- Validation accuracy and loss per epoch, the best and worst runs (by test top-1) highlighted ----------------------


BEST, WORST, OTHER = "#2ca02c", "#d62728", "#9a9a9a"
CURVES = {"val_top1": "Validation top-1 accuracy (%)", "val_loss": "Validation loss (cross-entropy, nats)"}


def epoch_values(history: list[dict], key: str) -> list[float]:
    """The value after every epoch with one, in order: training, then each retraining round."""
    return [entry[key] for entry in history if "epoch" in entry and key in entry]


def _extremes(runs: list[StudyRun]) -> tuple[StudyRun, StudyRun]:
    ranked = sorted(runs, key=lambda r: METRICS["top1"].read(r.metrics) or 0.0)
    return ranked[-1], ranked[0]


def curve_chart(study: Study, key: str) -> Chart | Skipped:
    """One line per done run; the highest- and lowest-accuracy runs drawn in colour on top."""
    name, title = f"curves_{key}", f"{CURVES[key].split(' (')[0]} per epoch"
    curves = {r.id: epoch_values(study.history(r), key) for r in study.done()}
    runs = [r for r in study.done() if curves[r.id]]
    if not runs:
        return Skipped(name, title, f"No run history in the store has {key} per epoch (a run with val_size 0 has none).")
    best, worst = _extremes(runs)
    top1 = METRICS["top1"].read
    def line(run, label=None, **style):
        ys = curves[run.id]
        return Series(label or run.label, list(range(1, len(ys) + 1)), ys, mode="lines", hover=[run.label] * len(ys), **style)
    series = [line(r, color=OTHER, width=1, opacity=0.5) for r in runs if r not in (best, worst)]
    if worst is not best:
        series.append(line(worst, f"lowest test top-1: {worst.label} ({top1(worst.metrics):.2f}%)", color=WORST, width=3))
    series.append(line(best, f"highest test top-1: {best.label} ({top1(best.metrics):.2f}%)", color=BEST, width=3))
    return Chart(name, title, subtitle(runs), "Epoch (training, then each retraining round, in order)", CURVES[key], series)


# --- Per-layer figures of one chosen run: sparsity after pruning, quantization error (SQNR) of each layer -------------


def layer_sparsity(table: dict) -> dict[str, float]:
    """Fraction of each layer's weights removed, from prune_layers.json (unstructured: zeros; structured: the
    weights of the channels cut)."""
    sparsity = {}
    for name, layer in table.get("layers", {}).items():
        if "sparsity" in layer:
            sparsity[name] = layer["sparsity"]
        elif "shape_before" in layer:
            sparsity[name] = 1 - math.prod(layer["shape_after"]) / math.prod(layer["shape_before"])
    return sparsity


def choose_run(study: Study, artifact: str, run_id: str | None, rank) -> StudyRun | None:
    """The run `run_id` names (an id prefix), else the done run with that artifact that ranks highest."""
    if run_id:
        found = [r for r in study.done() if r.id.startswith(run_id)]
        if len(found) != 1:
            raise ConfigError(f"run '{run_id}' matches {len(found)} done runs of study '{study.name}'")
        return found[0] if study.artifact(found[0], artifact) is not None else None
    runs = [r for r in study.done() if study.artifact(r, artifact) is not None]
    return max(runs, key=rank) if runs else None


def _none_found(run_id: str | None, kind: str, artifact: str) -> str:
    if run_id:
        return f"Run {run_id} has no per-layer table ({artifact})."
    return f"No {kind} run in the store has a per-layer table ({artifact})."


def layer_sparsity_chart(study: Study, run_id: str | None = None) -> Chart | Skipped:
    """Bars of each layer's sparsity in the chosen run (default: the study's sparsest)."""
    key, title = "layer_sparsity", "Per-layer sparsity"
    run = choose_run(study, "prune_layers.json", run_id, lambda r: METRICS["sparsity"].read(r.metrics) or 0)
    if run is None:
        return Skipped(key, title, _none_found(run_id, "pruned", "prune_layers.json"))
    values = layer_sparsity(study.artifact(run, "prune_layers.json"))
    names = list(values)
    why = "" if run_id else ", the sparsest of the study"
    return Chart(key, f"{title}: {run.label}", f"{subtitle([run])} · run {run.id[:8]}{why}", "Layer",
                 "Weights removed (%)", [Series("sparsity", names, [100 * values[n] for n in names], mode="bar", hover=names)])


def _largest_error(run: StudyRun) -> float:
    sqnr = METRICS["quant_sqnr"].read(run.metrics)
    return -(math.inf if sqnr is None else sqnr)


def layer_sqnr_chart(study: Study, run_id: str | None = None) -> Chart | Skipped:
    """Bars of each layer's SQNR in the chosen run (default: the study's run with the largest quantization error)."""
    key, title = "layer_sqnr", "Per-layer quantization error (SQNR)"
    run = choose_run(study, "quant_layers.json", run_id, _largest_error)
    if run is None:
        return Skipped(key, title, _none_found(run_id, "quantized", "quant_layers.json"))
    rows = [row for row in study.artifact(run, "quant_layers.json") if "sqnr_db" in row]
    if not rows:
        return Skipped(key, title, f"Run {run.id[:8]} kept every layer in float: no per-layer error to show.")
    names = [row["name"] for row in rows]
    series = [Series("at the layer's output (error accumulated up to it)", names, [row["sqnr_db"] for row in rows], mode="bar", hover=names),
              Series("this layer alone (float input)", names, [row.get("local_sqnr_db") for row in rows], symbol="diamond", color="black")]
    why = "" if run_id else ", the largest quantization error of the study"
    return Chart(key, f"{title}: {run.label}", f"{subtitle([run])} · run {run.id[:8]}{why}", "Layer",
                 "SQNR vs the float model (dB, higher is better)", series)


# --- Parallel coordinates over the varied settings and the metrics, one line per done run -----------------------------


METRIC_AXES = ["top1", "size", "nonzero_params", "sparsity", "macs", "quant_sqnr", "train_time"]


def setting_axis(label: str, settings: list) -> Dimension:
    """Numbers stay on a numeric axis; anything else (names, lists) is coded 0, 1, ... with its text as ticks."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in settings):
        return Dimension(label, [float(v) for v in settings])
    texts = [v if isinstance(v, str) else json.dumps(v) for v in settings]
    codes = {t: float(i) for i, t in enumerate(dict.fromkeys(texts))}
    return Dimension(label, [codes[t] for t in texts], {c: t for t, c in codes.items()})


def _setting(run: StudyRun, axis: str):
    return run.variant if axis == "variant" else run.point.get(axis)


def parallel_figure(study: Study) -> Parallel | Skipped:
    """Axes: the variant (when there are several), each varied setting, then every metric all done runs have."""
    key, title = "parallel_coordinates", "Every run: settings and results"
    runs = study.done()
    if len(runs) < 2:
        return Skipped(key, title, "Fewer than two done runs: nothing to compare across settings.")
    axes = (["variant"] if len({r.variant for r in runs}) > 1 else []) + [a for a in study.axes if a != "variant"]
    dims = [setting_axis(a, [_setting(r, a) for r in runs]) for a in axes]
    metrics = [METRICS[k] for k in METRIC_AXES] + [latency_metric(b) for b in batch_sizes(runs)]
    complete = [m for m in metrics if all(m.read(r.metrics) is not None for r in runs)]
    dims += [Dimension(m.label, [m.read(r.metrics) for r in runs]) for m in complete]
    left = [m.label for m in metrics if m not in complete and values_of(runs, m)]
    note = f"Drag along an axis to select a range. Left out (not every run has them): {', '.join(left)}." if left else "Drag along an axis to select a range."
    failed = sum(r.status == "failed" for r in study.runs)
    not_done = len(study.runs) - len(runs)
    note += f" {not_done} run(s) not done ({failed} failed) are not drawn; the runs table lists them." if not_done else ""
    return Parallel(key, title, subtitle(runs), dims, [METRICS["top1"].read(r.metrics) or 0.0 for r in runs],
                    METRICS["top1"].label, note)


# --- Every figure of a report -------------------------------------------------------------------------------------


def build_figures(study: Study, references: list[dict], layer_run: str | None = None) -> Figures:
    """Every figure the issue lists, or the sentence that says why the store cannot draw it."""
    figures = Figures()
    figures.add(parallel_figure(study))
    figures.add(sparsity_chart(study, references))
    figures.add(pareto_chart("pareto_size", study, METRICS["size"], METRICS["size"].label, references))
    figures.add(latency_charts(study, references))
    figures.add(pareto_chart("pareto_energy", study, METRICS["energy"], METRICS["energy"].label, references))
    figures.add([curve_chart(study, "val_top1"), curve_chart(study, "val_loss")])
    figures.add([layer_sparsity_chart(study, layer_run), layer_sqnr_chart(study, layer_run)])
    return figures
