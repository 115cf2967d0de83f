"""The explore folder: the sensitivity table (CSV, JSON), every trial's score (CSV), the recommendation (JSON, text,
HTML page)."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

from slimlab.atomic import write_atomic
from slimlab.explore import halving
from slimlab.explore.page import write_page

SENSITIVITY_CSV, SENSITIVITY_JSON = "sensitivity.csv", "sensitivity.json"
TRIALS_CSV, RECOMMENDATION_JSON = "trials.csv", "recommendation.json"


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue().encode()


def write_sensitivity(out: Path, table: list[dict]) -> None:
    """Layer x setting: top-1 change in points on the validation slice (empty where a trial failed)."""
    write_atomic(out / SENSITIVITY_CSV, _csv(table))
    write_atomic(out / SENSITIVITY_JSON, json.dumps(table, indent=1).encode())


def trial_rows(cfg, result) -> list[dict]:
    """Every scored trial: its stage, when the stage finished (seconds into this invocation), label, validation
    change, objective, images, run id."""
    return [{"stage": stage, "stage_finished_s": result.finished.get(stage), "label": s.label,
             "val_top1_change": round(s.change, 4), halving.objective_key(cfg): s.objective, "val_images": s.images,
             "run_id": s.run_id} for stage, scores in result.scores.items() for s in scores]


def lower_bound(score) -> float:
    """The validation change less its two standard errors (halving.slack): one seed, one split, so the noise of the
    split is the replicate spread there is."""
    return round(score.change - halving.slack(score.change, score.images), 4)


def runners_up(cfg, result, n: int = 3) -> list[str]:
    """Why the pick beat the nearest others on the whole validation split: lower ones lost too much, the rest are higher."""
    pick, lines = result.pick, []
    others = sorted((s for s in result.final() if s.label != pick.label), key=lambda s: abs(s.objective - pick.objective))
    for s in others[:n]:
        if s.objective < pick.objective:
            lines.append(f"{s.label}: {cfg.minimize} {s.objective / pick.objective:.2f}x the pick's, but {s.change:+.2f} points, "
                         f"over the {cfg.max_drop:g}-point budget")
        else:
            lines.append(f"{s.label}: {s.change:+.2f} points but {s.objective / pick.objective:.2f}x the pick's {cfg.minimize}")
    return lines


def write_results(out: Path, cfg, result, store=None) -> None:
    """trials.csv, recommendation.json and report.html (the answer first, then the evidence)."""
    rows = trial_rows(cfg, result)
    write_atomic(out / TRIALS_CSV, _csv(rows))
    pick = result.pick
    summary = {"question": cfg.model_dump(mode="json"), "objective": halving.objective_key(cfg), "trials": result.trials,
               "seconds": round(result.seconds, 1), "stages_finished_s": result.finished, "stopped": result.stopped,
               "pick": asdict(pick) if pick else None, "pick_val_change_lower_bound": lower_bound(pick) if pick else None,
               "runners_up": runners_up(cfg, result) if pick else [],
               "closest": asdict(result.closest) if result.closest else None,
               "float": asdict(result.float_score) if result.float_score else None, "test": result.test,
               "best_single": asdict(single) if (single := best_single(cfg, result)) else None, "figures": result.figures,
               "deployable": str(result.deployable) if result.deployable else None, "load": result.snippet,
               "selection": "every choice on the validation split; " + ("the test split read once per finalist, at the end"
                                                                         if pick else "nothing was picked, so the test split was not read")}
    write_atomic(out / RECOMMENDATION_JSON, json.dumps(summary, indent=1).encode())
    write_page(out, cfg, result, summary, format_result(cfg, result), rows, store)


def best_single(cfg, result):
    """The fastest single method (one step as it comes) within the budget on the whole validation split."""
    return halving.pick([s for s in result.final() if s.single], cfg)


FIGURES = {"latency_b{}_median_ms": "latency_ms", "energy_b{}_mj": "energy_mj", "model_size_bytes": "file_bytes",
           "weight_payload_bytes": "weight_bytes"}


def compared_figures(cfg, result, store) -> dict:
    """Latency (and energy, where measured) at the objective's batch and size (file, weights) of the pick, float and
    the best single method."""
    chosen = {s.label: s for s in (result.pick, result.float_score, best_single(cfg, result)) if s is not None}
    return {label: {name: store.get(s.run_id).metrics.get(key.format(cfg.batch)) for key, name in FIGURES.items()}
            for label, s in chosen.items()}


def _against(result, label: str, other: str) -> str:
    """'latency 0.33x, file 0.38x, weights 0.27x' of `label` against `other`: its figure over theirs, from what both
    recorded (below 1 is better; a small model's TorchScript file can grow while its weights shrink)."""
    mine, theirs = result.figures.get(label, {}), result.figures.get(other, {})
    return ", ".join(f"{word} {mine[key] / theirs[key]:.2f}x" for key, word in
                     (("latency_ms", "latency"), ("energy_mj", "energy"), ("file_bytes", "file"), ("weight_bytes", "weights"))
                     if mine.get(key) and theirs.get(key))


def _float_answer(cfg, result, unit: str) -> str:
    """When compression did not pay: float as it is, and the best compressed candidate that kept the budget."""
    base, best = result.float_score, halving.pick(result.final(), cfg)
    lines = [f"Recommended: the float model as it is (run {base.run_id[:8]}): no compressed candidate within the budget had a "
             f"lower {cfg.minimize} than its {base.objective:.4g} {unit} here; the lowest, {best.label}, is "
             f"{best.objective / base.objective:.2f}x float's ({best.change:+.2f} points)"]
    if base.label in result.test:
        lines.append(f"Test split (read once, after the choice): top-1 {result.test[base.label]['test_top1']:.2f}%")
    ended = f"; stopped: {result.stopped}" if result.stopped else ""
    lines += [f"{result.trials} trials in {result.seconds:.0f} s{ended}. Deployable: {result.deployable}", f"Load: {result.snippet}"]
    return "\n".join(lines)


def format_result(cfg, result) -> str:
    """The answer for people: the pick against float (validation change, objective ratio, test figures), the load line."""
    unit = halving.objective_unit(cfg)
    if result.pick is None and not result.final():
        return (f"slimlab explore: {result.stopped or 'no candidate finished'}; the same command with a larger "
                "--time-budget goes on from there")
    if result.pick is None:
        near = result.closest
        return ("slimlab explore: no configuration keeps validation top-1 within {:g} points of float; the closest is "
                "'{}' ({:+.2f} points)".format(cfg.max_drop, near.label, near.change) if near else
                "slimlab explore: no candidate finished; see the failed runs with `slimlab runs`")
    pick, base = result.pick, result.float_score
    if pick.label == base.label:
        return _float_answer(cfg, result, unit)
    ratio = f", {base.objective / pick.objective:.2f}x better than float ({base.objective:.4g} {unit})" if base and pick.objective else ""
    lines = [f"Recommended: {pick.label} (run {pick.run_id[:8]}): {cfg.minimize} {pick.objective:.4g} {unit}{ratio}; "
             f"validation top-1 change {pick.change:+.2f} points on {pick.images} images (lower bound {lower_bound(pick):+.2f})"]
    if base and (said := _against(result, pick.label, base.label)):
        lines.append(f"Against float (batch {cfg.batch}): {said} float's")
    single = best_single(cfg, result)
    if single is not None and single.label != pick.label and pick.objective:
        lines.append(f"Best single method within the budget: {single.label}, {single.objective:.4g} {unit}; the pick's "
                     + (_against(result, pick.label, single.label) or f"objective {pick.objective / single.objective:.2f}x")
                     + " of it")
    if lower_bound(pick) < -cfg.max_drop:
        lines.append(f"Its lower bound is outside the budget: {pick.images} validation images cannot tell {cfg.max_drop:g} "
                     f"points from noise (one image is {100 / pick.images:.2f} points); a larger --val-size can")
    if pick.label in result.test:
        test = result.test[pick.label]["test_top1"]
        ref = result.test.get("float", {}).get("test_top1")
        lines.append(f"Test split (read once, after the choice): top-1 {test:.2f}%" + (f", float {ref:.2f}%" if ref is not None else ""))
    ended = f"; stopped: {result.stopped}" if result.stopped else ""
    lines.append(f"{result.trials} trials in {result.seconds:.0f} s{ended}. Deployable: {result.deployable}")
    lines.append(f"Load: {result.snippet}")
    return "\n".join(lines)
