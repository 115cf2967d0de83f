"""Executors decide where a study's stages run: `inline` (this process), `local` (worker processes), `slurm` (a cluster).

An executor is one registered function `execute(plan, store, options) -> Outcome`; the plan says what runs and in
which order, the executor only where. Adding one is a function with `@register_executor("name")` in its own module,
listed in `_BUILTIN`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from slimlab.errors import ConfigError

_REGISTRY: dict[str, Callable] = {}
_BUILTIN = ("inline", "local", "slurm")


@dataclass
class ExecOptions:
    """How a study executes; none of it changes what a run computes."""

    jobs: int = 1  # worker processes (local)
    gpus: list[str] = field(default_factory=list)  # GPU ids, one worker each (local)
    retries: int = 0  # extra attempts for transient failures (oom, timeout, preempted, killed)
    max_same_failures: int | None = None  # stop once this many tasks fail with the same error
    force: bool = False  # run done runs again, reusing finished trainings
    retrain: bool = False  # like force, and train every parent again too
    detach: bool = False  # submit and return (slurm)
    progress: bool = True
    slurm: dict = field(default_factory=dict)  # the study file's slurm: section, with the command line's flags on top
    defer_latency: bool = False  # time latencies at the end, alone, even with one worker (explore: no float baselines per run)


@dataclass
class Outcome:
    """What an executor did: per run id its status in the store, lines for people, and whether it stopped early."""

    statuses: dict[str, str]
    messages: list[str] = field(default_factory=list)
    stopped: str | None = None
    submitted: bool = False  # work was handed to a scheduler and may still be running (detached)


def register_executor(name: str):
    """Register `fn(plan, store, options) -> Outcome` as the executor `name`."""
    def wrap(fn: Callable) -> Callable:
        _REGISTRY[name] = fn
        return fn
    return wrap


def get_executor(name: str) -> Callable:
    """The executor registered as `name` (its module is imported on first use)."""
    if name in _BUILTIN and name not in _REGISTRY:
        importlib.import_module(f"slimlab.executors.{name}")
    if name not in _REGISTRY:
        raise ConfigError(f"--executor {name}: unknown executor; known: {', '.join(sorted(set(_BUILTIN) | set(_REGISTRY)))}")
    return _REGISTRY[name]


def execute(plan, store, executor: str = "local", options: ExecOptions | None = None) -> Outcome:
    """Record the study's plan in the store (studies/NAME.json, for `status` and reports), then execute it; refuse in
    one line (StudyBusy) while another live driver runs the same study."""
    import time

    fn = get_executor(executor)
    with store.driving(plan.study.name):
        previous = store.study(plan.study.name) or {}
        store.save_study({**previous, **plan.manifest(), "executor": executor, "created": previous.get("created", time.time())})
        return fn(plan, store, options or ExecOptions())


def final_statuses(plan, store) -> dict[str, str]:
    """Each planned run's status in the store now ('missing' when it has no record)."""
    records = {r.id: r.status for r in store.runs()}
    return {stage.id: records.get(stage.id, "missing") for stage in plan.runs}
