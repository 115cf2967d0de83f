"""A study's progress from the store alone: how many runs are done, running, queued, failed or stale, and an ETA."""
from __future__ import annotations

import statistics
import time

from slimlab.store import Store, read_statuses

STATES = ("done", "running", "queued", "failed", "stale")


def plan_statuses(store_root, run_ids: list[str]) -> dict[str, str]:
    """Each run's status for a dry run: done / failed / running / stale, or 'to run'; reads, never creates."""
    found = read_statuses(store_root, run_ids)
    return {i: found.get(i, "to run") for i in run_ids}


def study_progress(store: Store, manifest: dict) -> dict:
    """Counts per state, the runs that failed or went stale (with reasons), and the ETA in seconds (None if unknown)."""
    records = {r.id: r for r in store.runs()}
    counts = dict.fromkeys(STATES, 0)
    problems = []
    for run in manifest["runs"]:
        record = records.get(run["id"])
        state = "queued" if record is None else record.status
        counts[state] = counts.get(state, 0) + 1
        if state in ("failed", "stale"):
            problems.append((run["id"], run["label"], state, record.failure if state == "failed" else "stale", record.error or ""))
    return {"counts": counts, "problems": problems, "eta_seconds": _eta(store, manifest, counts)}


def _eta(store: Store, manifest: dict, counts: dict) -> float | None:
    """Work left over the runs going on now: the parents' training epochs left at the seconds an epoch has taken, plus
    each unfinished run at the median wall time of the runs done so far (a run's own steps: rounds, QAT, measuring).
    None while there is nothing to go by."""
    left = counts["queued"] + counts["running"] + counts["stale"]
    if left == 0:
        return 0.0
    epoch_seconds, epochs_left = [], 0
    for training in manifest.get("trainings", []):
        progress = store.training_progress(training["key"])
        finished = (store.training_dir(training["key"]) / "trained.pt").exists()
        done = training["epochs"] if finished else (progress or {}).get("epoch", 0)
        if progress and progress.get("epoch"):
            epoch_seconds.append(progress["seconds"] / progress["epoch"])
        epochs_left += training["epochs"] - done
    ids = {run["id"] for run in manifest["runs"]}
    run_seconds = [r.seconds for r in store.runs("done") if r.id in ids and r.seconds is not None]
    if (epochs_left and not epoch_seconds) or not run_seconds:
        return None
    work = epochs_left * statistics.median(epoch_seconds or [0.0]) + left * statistics.median(run_seconds)
    return work / max(1, counts["running"])


def format_progress(name: str, progress: dict) -> list[str]:
    """Lines for people: one summary line, then one per failed or stale run."""
    counts, eta = progress["counts"], progress["eta_seconds"]
    total = sum(counts.values())
    when = "unknown" if eta is None else "finished" if eta == 0 else f"about {_duration(eta)} of training left"
    lines = [f"{name}: {total} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATES) + f"; ETA {when}"]
    for run_id, label, state, kind, error in progress["problems"]:
        lines.append(f"  {run_id[:8]}  {state:6}  {kind or '':9}  {label}: {error.splitlines()[0] if error else ''}")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def updated_ago(manifest: dict) -> str:
    return _duration(time.time() - manifest["updated"])
