"""Validation accuracy and loss per epoch from each run's history, the best and worst runs (by test top-1) highlighted."""
from __future__ import annotations

from slimlab.report.fields import METRICS
from slimlab.report.spec import Chart, Series, Skipped
from slimlab.report.study import Study, StudyRun
from slimlab.report.tradeoffs import subtitle

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
