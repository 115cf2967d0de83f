"""Per-layer figures of one chosen run: sparsity after pruning, and quantization error (SQNR) of each layer."""
from __future__ import annotations

import math

from slimlab.errors import ConfigError
from slimlab.report.spec import Chart, Series, Skipped
from slimlab.report.study import Study, StudyRun
from slimlab.report.tradeoffs import subtitle


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


def sparsity_chart(study: Study, run_id: str | None = None) -> Chart | Skipped:
    """Bars of each layer's sparsity in the chosen run (default: the study's sparsest)."""
    key, title = "layer_sparsity", "Per-layer sparsity"
    run = choose_run(study, "prune_layers.json", run_id, lambda r: r.metrics.get("prune_sparsity", 0))
    if run is None:
        return Skipped(key, title, _none_found(run_id, "pruned", "prune_layers.json"))
    values = layer_sparsity(study.artifact(run, "prune_layers.json"))
    names = list(values)
    why = "" if run_id else ", the sparsest of the study"
    return Chart(key, f"{title}: {run.label}", f"{subtitle([run])} · run {run.id[:8]}{why}", "Layer",
                 "Weights removed (%)", [Series("sparsity", names, [100 * values[n] for n in names], mode="bar", hover=names)])


def sqnr_chart(study: Study, run_id: str | None = None) -> Chart | Skipped:
    """Bars of each layer's SQNR in the chosen run (default: the study's run with the largest quantization error)."""
    key, title = "layer_sqnr", "Per-layer quantization error (SQNR)"
    run = choose_run(study, "quant_layers.json", run_id, lambda r: -r.metrics.get("quant_sqnr_db", math.inf))
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
