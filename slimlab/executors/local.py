"""Run a study's experiments in this process, in order; a failed run is recorded and the study goes on."""
from __future__ import annotations

from tqdm import tqdm

from slimlab.plan import PlannedRun
from slimlab.run import run
from slimlab.store import RunRecord, Store


def run_all(planned: list[PlannedRun], store: Store, progress: bool = True) -> list[RunRecord]:
    """Run every planned experiment not yet done; return their records in plan order."""
    records = []
    bar = tqdm(planned, desc="study", unit="run", disable=not progress)
    for item in bar:
        bar.set_postfix_str(item.label)
        records.append(run(item.config, store, progress=progress))
    return records
