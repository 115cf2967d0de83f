"""Parallel coordinates over a study's varied settings and its metrics, one line per done run (brushable in the HTML)."""
from __future__ import annotations

import json

from slimlab.report import fields
from slimlab.report.fields import METRICS
from slimlab.report.spec import Dimension, Parallel, Skipped
from slimlab.report.study import Study, StudyRun
from slimlab.report.tradeoffs import subtitle

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
    metrics = [METRICS[k] for k in METRIC_AXES] + [fields.latency_metric(b) for b in fields.batch_sizes(runs)]
    complete = [m for m in metrics if all(m.read(r.metrics) is not None for r in runs)]
    dims += [Dimension(m.label, [m.read(r.metrics) for r in runs]) for m in complete]
    left = [m.label for m in metrics if m not in complete and fields.values(runs, m)]
    note = f"Drag along an axis to select a range. Left out (not every run has them): {', '.join(left)}." if left else "Drag along an axis to select a range."
    not_done = len(study.runs) - len(runs)
    note += f" {not_done} run(s) not done are not drawn; the runs table lists them." if not_done else ""
    return Parallel(key, title, subtitle(runs), dims, [METRICS["top1"].read(r.metrics) or 0.0 for r in runs],
                    METRICS["top1"].label, note)
