"""`recommend`: from what a study measured, the configuration that minimizes one figure (latency, size, energy, MACs)
while its accuracy stays within a budget of its float parent; with replicates the lower end of the spread must."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from slimlab.report.metrics import (METRICS, Metric, averaged, device_of, joined, latency_noisy, latency_pending, mean_std,
                                    metric, per_device, sample_size, values_of)
from slimlab.report.study import StudyRun
from slimlab.report.tables import fmt

SHOWN = ["size", "macs", "energy"]  # printed beside the objective and the accuracy


@dataclass(frozen=True)
class Candidate:
    """A configuration's done replicates, its mean objective and accuracy, and its accuracy change against its parent."""

    group: str
    runs: list[StudyRun]
    value: float
    top1: float
    top1_std: float | None
    change_low: float  # points; mean - std of (top1 - float parent's top1) over replicates, the value itself for one
    n: str = ""  # how many runs the means hold, and how many of the configuration's failed: `n=2`


@dataclass(frozen=True)
class Recommendation:
    objective: Metric
    max_drop: float
    ranked: list[Candidate]  # the qualifying configurations, best first
    rejected: list[tuple[str, str]]  # (configuration, why it does not qualify)
    parents: dict[str, list[StudyRun]]  # configuration -> the float parent of each replicate that the study has

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    @property
    def runner_up(self) -> Candidate | None:
        return self.ranked[1] if len(self.ranked) > 1 else None


def accuracy_change(run: StudyRun) -> float | None:
    """Top-1 minus the float parent's; 0 for a run without compression steps, None when the parent is unknown."""
    change = METRICS["top1_change"].read(run.metrics)
    if change is not None:
        return change
    return 0.0 if "top1" in run.metrics and not run.record.config.get("steps") else None


def _rejection(runs: list[StudyRun], objective: Metric) -> str | None:
    done = [r for r in runs if r.status == "done"]
    failed = [r for r in runs if r.failure]
    if failed:
        return f"{len(failed)} of {len(runs)} runs failed ({joined(r.failure for r in failed)})"
    if not done:
        return joined(r.status for r in runs)
    if any(accuracy_change(r) is None for r in done):
        return "no float parent accuracy recorded"
    if per_device(objective) and any(latency_pending(r.record) for r in done):
        return "latency pending"
    if per_device(objective) and len({device_of(r) for r in done}) > 1:
        return f"replicates timed on different devices ({joined(device_of(r) for r in done)})"
    if len(values_of(done, objective)) < len(done):
        return f"no {objective.label}"
    return None


def _candidate(group: str, runs: list[StudyRun], objective: Metric) -> Candidate:
    done = [r for r in runs if r.status == "done"]
    change, change_std = mean_std([accuracy_change(r) for r in done])
    top1, top1_std = mean_std(values_of(done, METRICS["top1"]))
    timed = averaged(done, objective)  # a latency timed under load is not averaged with those timed alone
    return Candidate(group, done, mean_std(values_of(timed, objective))[0], top1, top1_std, change - (change_std or 0.0),
                     sample_size(runs, len(done)))


def _parent(run: StudyRun, runs: list[StudyRun]) -> StudyRun | None:
    """The study's done run with the same config and no compression steps: the model this one was made from."""
    def base(r):
        return {k: v for k, v in r.record.config.items() if k not in ("name", "steps")}
    return next((p for p in runs if p.status == "done" and not p.record.config.get("steps") and base(p) == base(run)), None)


def _one_device(ranked: list[Candidate], rejected: list, objective: Metric) -> tuple[list[Candidate], list]:
    """Latencies (and inference energies) are ranked on one device only (the one most candidates were measured on): a
    GPU figure against a CPU one compares the machines, not the configurations. The others are named, with why."""
    devices = [device_of(c.runs[0]) for c in ranked]
    if not per_device(objective) or len(set(devices)) < 2:
        return ranked, rejected
    kept = max(sorted(set(devices)), key=devices.count)
    what = objective.key.partition("_")[0]
    others = [(c.group, f"{what} measured on {d}; the ranking compares figures measured on {kept}") for c, d in zip(ranked, devices) if d != kept]
    return [c for c, d in zip(ranked, devices) if d == kept], rejected + others


def recommend(runs: list[StudyRun], max_drop: float = 1.0, minimize: str = "latency_b1") -> Recommendation:
    """Rank the configurations (replicates grouped) whose accuracy stays within `max_drop` points of the float parent
    by `minimize` (latency_bN, energy_bN, size, energy, macs), lowest first; every other configuration is named with why."""
    if max_drop < 0:
        raise ValueError(f"max_drop: expected a non-negative number of points, got {max_drop}")
    objective = metric(minimize)
    groups: dict[str, list[StudyRun]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    ranked, rejected = [], []
    for group, members in groups.items():
        why = _rejection(members, objective)
        candidate = None if why else _candidate(group, members, objective)
        if candidate and candidate.change_low < -max_drop:
            why = f"top-1 change {candidate.change_low:+.2f} points" + (" (mean - std)" if len(candidate.runs) > 1 else "")
        (rejected.append((group, why)) if why else ranked.append(candidate))
    ranked, rejected = _one_device(ranked, rejected, objective)
    ranked.sort(key=lambda c: (c.value, -c.top1))
    parents = {c.group: ps for c in ranked if (ps := [p for r in c.runs if (p := _parent(r, runs))])}
    return Recommendation(objective, max_drop, ranked, rejected, parents)


def experiment_text(candidate: Candidate, filename: str = "FILE") -> str:
    """The recommended run's resolved config as the text of an experiment file `slimlab run` takes."""
    run = candidate.runs[0]
    header = f"# Recommended by slimlab recommend: {candidate.group} (run {run.id}); `slimlab run {filename}` reproduces it.\n"
    return header + yaml.safe_dump(run.record.config, sort_keys=False)


def write_experiment(candidate: Candidate, path: str | Path) -> Path:
    """The recommended run's resolved config as an experiment file `slimlab run` takes."""
    Path(path).write_text(experiment_text(candidate, Path(path).name))
    return Path(path)


def _figure(runs: list[StudyRun], m: Metric) -> str:
    mean, std = mean_std(values_of(runs, m))
    return "" if mean != mean else fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def _comparison(rec: Recommendation) -> list[str]:
    """An aligned table: the pick, its float parent (when the study has it) and the runner-up, figure by figure."""
    best, runner, parents = rec.best, rec.runner_up, rec.parents.get(rec.best.group, [])
    columns = [(f"recommended ({best.n})", best.runs, f"{best.change_low:+.2f}")]
    if parents and {p.id for p in parents} != {r.id for r in best.runs}:  # the parent of each replicate, averaged alike
        columns.append((f"float parent ({sample_size(parents, len(parents))})", parents, "0"))
    columns += [(f"runner-up: {runner.group} ({runner.n})", runner.runs, f"{runner.change_low:+.2f}")] if runner else []
    metrics = [rec.objective, METRICS["top1"], *(METRICS[k] for k in SHOWN if k != rec.objective.key)]
    rows = [["", *(name for name, _, _ in columns)]]
    rows += [[m.label, *(_figure(runs, m) for _, runs, _ in columns)] for m in metrics]
    rows.append(["Top-1 change vs parent, lower end (points)", *(change for _, _, change in columns)])
    rows = [row for row in rows if any(row[1:])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]


def _why(rec: Recommendation) -> str:
    best, runner, noun = rec.best, rec.runner_up, rec.objective.label.split(" (")[0].lower()
    said = f"Why: of {len(rec.ranked)} configuration(s) within the budget it has the lowest {noun}"
    if runner:
        said += f"; the runner-up {runner.group} has {fmt(runner.value)} ({runner.value / best.value:.2f}x)" if best.value else ""
    if any(latency_noisy(r.record) for r in best.runs) and rec.objective.key.startswith("latency"):
        said += ". Its latency was flagged as noisy: measure it again before relying on the ranking"
    return said + "."


def format_recommendation(rec: Recommendation, study: str = "") -> str:
    """The recommendation for people: the pick against its parent and the runner-up, or plainly that none qualifies."""
    budget = f"top-1 within {rec.max_drop:g} points of the float parent"
    head = f"Study '{study}': minimize {rec.objective.label}, keeping {budget}." if study else f"Minimize {rec.objective.label}, keeping {budget}."
    lines = [head]
    if rec.best is None:
        lines.append(f"Nothing qualifies: no configuration has a measured {rec.objective.label} with {budget}.")
    else:
        lines.append(f"Recommended: {rec.best.group} (run {rec.best.runs[0].id[:8]}, {len(rec.best.runs)} replicate(s))")
        lines += _comparison(rec) + [_why(rec)]
    if rec.rejected:
        lines.append("Not qualifying: " + "; ".join(f"{group} ({why})" for group, why in rec.rejected))
    return "\n".join(lines)
