"""Which of a study's tasks may start now: trainings first, each run once its training is done, latencies last and
alone; transient failures retried, and the study stopped when one error keeps repeating. Decides order, not place."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from slimlab.executors.tasks import latency_task, record_failure, run_task, training_task
from slimlab.plan import Plan, RunStage, Training
from slimlab.store import TRANSIENT_FAILURES, Store


@dataclass
class ScheduleOptions:
    retries: int = 0  # extra attempts for a task whose failure is transient (oom, timeout, preempted, killed)
    max_same_failures: int | None = None  # stop starting tasks once this many fail with the same error
    defer_latency: bool = False  # time latencies at the end, one at a time, instead of inside each run
    force: bool = False  # run done runs again (reusing finished trainings)
    retrain: bool = False  # train every parent again too


def training_finished(store: Store, key: str, snapshot_epochs) -> bool:
    """A parent whose weights, and every snapshot asked for, are in the store: nothing to train."""
    folder = store.training_dir(key)
    return (folder / "trained.pt").exists() and all((folder / f"weights_epoch{e}.pt").exists() for e in snapshot_epochs)


@dataclass(frozen=True)
class Work:
    """What a study still has to do: the runs, the trainings they need, the done runs whose latency is pending."""

    runs: list[RunStage]
    trainings: list[Training]
    pending_latency: list[str]


def select_work(plan: Plan, store: Store, force: bool = False, retrain: bool = False, busy=frozenset()) -> Work:
    """Runs not done (all with `force` or `retrain`) and not `busy` elsewhere, the trainings among their parents that
    are not finished (all with `retrain`), and the latencies left pending."""
    records = {r.id: r for r in store.runs()}
    runs = [s for s in plan.runs if s.id not in busy and (force or retrain or getattr(records.get(s.id), "status", None) != "done")]
    keys = {s.training for s in runs}
    trainings = [t for t in plan.trainings if t.key in keys and t.key not in busy
                 and (retrain or not training_finished(store, t.key, t.snapshot_epochs))]
    later = {s.id for s in plan.runs} - {s.id for s in runs} - set(busy)  # a run about to run again is timed after it
    pending = [r.id for r in records.values() if r.notes.get("latency_status") == "pending" and r.id in later]
    return Work(runs, trainings, pending)


@dataclass
class Schedule:
    """The study's tasks in dependency order for an executor that asks `next_task()` and reports `finished()`."""

    plan: Plan
    store: Store
    options: ScheduleOptions = field(default_factory=ScheduleOptions)

    def __post_init__(self):
        work = select_work(self.plan, self.store, self.options.force, self.options.retrain)
        self.labels = {s.id: s.planned.label for s in self.plan.runs}
        self.snapshots = {t.key: t.snapshot_epochs for t in self.plan.trainings}
        self.ready: deque[dict] = deque(training_task(t, self.plan, self.options.retrain) for t in work.trainings)
        self.blocked: dict[str, list] = {}
        for stage in work.runs:
            self.blocked.setdefault(stage.training, []).append(stage)
        training_now = {t.key for t in work.trainings}
        for key in [k for k in self.blocked if k not in training_now]:
            self._release(key)
        self.latency = deque(latency_task(i, self.labels[i]) for i in work.pending_latency)
        self.running: dict[str, dict] = {}
        self.attempts: Counter = Counter()
        self.errors: Counter = Counter()
        self.stopped: str | None = None

    def _release(self, key: str | None) -> None:
        for stage in self.blocked.pop(key, []):
            self.ready.append(run_task(stage, self.plan, self.snapshots.get(stage.training, frozenset()), self.options.defer_latency,
                                       self.options.force or self.options.retrain))

    def next_task(self) -> dict | None:
        """A task that may start now, or None (nothing ready, or the study stopped)."""
        if self.stopped:
            return None
        if self.ready:
            task = self.ready.popleft()
        elif self.latency and not self.running and not self.blocked:
            task = self.latency.popleft()  # alone: nothing else of the study is running
        else:
            return None
        self.running[task["id"]] = task
        self.attempts[task["id"]] += 1
        return task

    def finished(self, task: dict, result: dict) -> str | None:
        """Take a task's result; returns a line for people when it failed."""
        self.running.pop(task["id"], None)
        if result["ok"]:
            if task["kind"] == "train":
                self._release(task["id"])
            elif task["kind"] == "run" and task.get("defer_latency") and self._latency_pending(task["id"]):
                self.latency.append(latency_task(task["id"], task["label"]))
            return None
        if result["failure"] in TRANSIENT_FAILURES and self.attempts[task["id"]] <= self.options.retries:
            self.ready.appendleft(task)
            return f"{task['label']}: {result['failure']} ({result['error']}); retrying"
        if task["kind"] == "run":
            record_failure(self.store, task, result)
        elif task["kind"] == "train":
            for stage in self.blocked.pop(task["id"], []):
                record_failure(self.store, run_task(stage, self.plan, frozenset(), False),
                               {**result, "error": f"its parent training failed: {result['error']}"})
        self._count(result["error"])
        return f"{task['label']} failed ({result['failure']}): {result['error']}"

    def _count(self, error: str) -> None:
        self.errors[error] += 1
        limit = self.options.max_same_failures
        if limit and self.errors[error] >= limit and not self.stopped:
            self.stopped = f"stopped after {self.errors[error]} failures with the same error: {error}"

    def _latency_pending(self, run_id: str) -> bool:
        record = self.store.get(run_id)
        return record is not None and record.notes.get("latency_status") == "pending"

    def done(self) -> bool:
        """Nothing running and nothing left that may start."""
        if self.running:
            return False
        return self.stopped is not None or not (self.ready or self.latency)
