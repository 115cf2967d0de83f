"""One unit of a study's work (train a parent, run an experiment, time a run's latency) as plain JSON, and the one
function that executes it; the same on the driver, in a local worker process and in a SLURM job."""
from __future__ import annotations

from slimlab.plan import Plan, RunStage, Training
from slimlab.store import Store


def training_task(training: Training, plan: Plan, retrain: bool = False) -> dict:
    return {"kind": "train", "id": training.key, "label": f"training {training.key}",
            "config": training.config.model_dump(mode="json"), "device": plan.device,
            "snapshot_epochs": sorted(training.snapshot_epochs), "retrain": retrain}


def run_task(stage: RunStage, plan: Plan, snapshot_epochs: frozenset[int], defer_latency: bool, force: bool = False) -> dict:
    return {"kind": "run", "id": stage.id, "label": stage.planned.label, "training": stage.training,
            "config": stage.planned.config.model_dump(mode="json"), "device": plan.device,
            "snapshot_epochs": sorted(snapshot_epochs), "defer_latency": defer_latency, "force": force}


def latency_task(run_id: str, label: str) -> dict:
    return {"kind": "latency", "id": run_id, "label": f"latency of {label}"}


def execute_task(task: dict, store: Store) -> dict:
    """Do the task; return {"ok": True} or {"ok": False, "failure": class, "error": reason}. Never raises, except on
    Ctrl-C, so a worker outlives a failed run."""
    from slimlab.config import ExperimentConfig
    from slimlab.run import RunOptions, failure_class, measure_pending_latency, run, train_parent

    try:
        if task["kind"] == "latency":
            measure_pending_latency(store, task["id"])
            return {"ok": True}
        config = ExperimentConfig.model_validate(task["config"])
        options = RunOptions(progress=False, force=task.get("force", False), retrain=task.get("retrain", False),
                             snapshot_epochs=frozenset(task["snapshot_epochs"]), device=task["device"],
                             defer_latency=task.get("defer_latency", False))
        if task["kind"] == "train":
            train_parent(config, store, options)
            return {"ok": True}
        record = run(config, store, options=options)
        if record.status != "done":
            return {"ok": False, "failure": record.failure or "error", "error": record.error or "failed"}
        return {"ok": True}
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a task's failure is the task's, not the worker's
        return {"ok": False, "failure": failure_class(exc), "error": f"{type(exc).__name__}: {exc}"}


def record_failure(store: Store, task: dict, result: dict) -> None:
    """Make sure the store says why a run failed, also when its process died before it could say so itself."""
    record = store.get(task["id"])
    if record is None:
        store.start(task["id"], task["config"], task["config"].get("name", ""))
    if record is None or record.status != "failed":
        store.fail(task["id"], result["error"], result["failure"])
