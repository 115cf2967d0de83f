"""Run a study's experiments in this process, in order; a failed run is recorded and the study goes on."""
from __future__ import annotations

from tqdm import tqdm

from collections import defaultdict

from slimlab.config import config_hash, training_hash
from slimlab.plan import PlannedRun
from slimlab.run import run, snapshot_epochs
from slimlab.store import RunRecord, Store


def run_all(planned: list[PlannedRun], store: Store, progress: bool = True) -> list[RunRecord]:
    """Run every planned experiment not yet done; return their records in plan order.

    A run that raises (a missing optional package, a user model that fails to build) is already recorded as failed
    with its reason; it is reported in one line and the study goes on. Ctrl-C stops the study."""
    # Epochs any run rewinds to, per shared training: the first run to train keeps them all, so no later run of the
    # same training has to train it again to get an epoch the first one passed without saving.
    keys = [training_hash(item.config) for item in planned]
    wanted = defaultdict(set)
    for item, key in zip(planned, keys):
        wanted[key] |= snapshot_epochs(item.config)
    records = []
    bar = tqdm(list(zip(planned, keys)), desc="study", unit="run", disable=not progress)
    for item, key in bar:
        bar.set_postfix_str(item.label)
        try:
            records.append(run(item.config, store, progress=progress, snapshot_epochs=wanted[key]))
        except Exception as exc:  # noqa: BLE001 - any run's failure is the run's, not the study's
            tqdm.write(f"slimlab: run {item.label} failed: {type(exc).__name__}: {exc}")
            run_id = config_hash(item.config)
            record = store.get(run_id)
            if record is None:  # it failed before the run was recorded
                store.start(run_id, item.config.model_dump(mode="json"), item.config.name)
            if record is None or record.status != "failed":
                store.fail(run_id, f"{type(exc).__name__}: {exc}")
            records.append(store.get(run_id))
    return records
