"""The `local` executor: N worker processes on this machine, the CPU's threads split between them, or one per GPU.

A worker that crashes (segfault, out of memory, SIGKILL) takes down only the task it held: the task is recorded as
failed with its class, and a fresh worker takes its place. A driver that dies takes its workers with it, SIGKILL
included: their runs go stale and the next invocation resumes them, instead of orphans computing on unseen.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from slimlab.errors import ConfigError
from slimlab.executors import ExecOptions, Outcome, final_statuses, register_executor
from slimlab.executors.schedule import Schedule, ScheduleOptions
from slimlab.plan import Plan
from slimlab.store import Store


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def worker_environments(jobs: int, gpus: list[str]) -> list[dict]:
    """Each worker's environment: its share of the CPU threads (jobs x threads <= cores), and its GPU if any."""
    cores = available_cores()
    if not gpus and jobs > cores:
        raise ConfigError(f"-j {jobs}: this machine has {cores} cores, and each worker needs at least one; use -j {cores} or less")
    workers = len(gpus) or jobs
    threads = max(1, cores // workers)
    envs = []
    for i in range(workers):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "SLIMLAB_THREADS": str(threads),
               "SLIMLAB_EXECUTOR": f"local, {workers} workers x {threads} threads"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        envs.append(env)
    return envs


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_PARENT_SECONDS = 1.0


def die_with_parent(parent: int) -> str:
    """End this process when `parent` dies, however it dies: the kernel's parent-death signal on Linux, a thread that
    watches the parent's pid elsewhere. Returns which guard is in place."""
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
            if os.getppid() != parent:  # the parent died before the guard was set
                os._exit(1)
            return "pdeathsig"
    except (OSError, AttributeError):  # not Linux
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(WATCH_PARENT_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()
    return "watchdog"


def _worker_main(conn: Connection, env: dict, store_root: str, parent: int) -> None:
    """A worker; one whose driver is gone (killed) ends quietly: its traceback would land in the next driver's log."""
    die_with_parent(parent)
    try:
        _serve(conn, env, store_root)
    except (EOFError, BrokenPipeError):  # what it finished is in the store; the next driver runs the rest
        pass


def _serve(conn: Connection, env: dict, store_root: str) -> None:
    """Set the threads and GPU before torch starts, then execute tasks until told to stop."""
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import torch

    from slimlab.executors.tasks import execute_task

    torch.set_num_threads(int(env["SLIMLAB_THREADS"]))
    store = Store(store_root)
    while (task := conn.recv()) is not None:
        if task["kind"] == "latency":  # timed alone, with every core
            torch.set_num_threads(available_cores())
        conn.send(execute_task(task, store))
        torch.set_num_threads(int(env["SLIMLAB_THREADS"]))


@dataclass
class Worker:
    process: mp.Process
    conn: Connection
    env: dict
    task: dict | None = None


def _start_worker(context, env: dict, store_root: str) -> Worker:
    ours, theirs = context.Pipe()
    process = context.Process(target=_worker_main, args=(theirs, env, store_root, os.getpid()), daemon=True)
    process.start()
    theirs.close()
    return Worker(process, ours, env)


def oom_kills() -> int:
    """Out-of-memory kills so far in this process's cgroup (v2), to tell an OOM kill from another SIGKILL."""
    try:
        for line in Path("/sys/fs/cgroup/memory.events").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def crash_result(exitcode: int | None, oom_before: int) -> dict:
    """The failure of a task whose worker process died."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        if -exitcode == signal.SIGKILL:
            if oom_before >= 0 and oom_kills() > oom_before:
                return {"ok": False, "failure": "oom", "error": "the worker was killed by the kernel's out-of-memory killer"}
            return {"ok": False, "failure": "killed", "error": "the worker was killed by SIGKILL (out of memory, or killed from outside)"}
        kind = "killed" if -exitcode in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) else "error"
        return {"ok": False, "failure": kind, "error": f"the worker died of {name}"}
    return {"ok": False, "failure": "error", "error": f"the worker exited with status {exitcode}"}


@register_executor("local")
def execute_local(plan: Plan, store: Store, options: ExecOptions) -> Outcome:
    """Run the plan in worker processes; latencies are timed at the end, alone, when more than one worker runs."""
    envs = worker_environments(options.jobs, options.gpus)
    schedule = Schedule(plan, store, ScheduleOptions(options.retries, options.max_same_failures, len(envs) > 1 or options.defer_latency,
                                                          options.force, options.retrain))
    context = mp.get_context("spawn")  # never fork a process that may hold torch threads or CUDA
    workers = [_start_worker(context, env, str(store.root)) for env in envs]
    messages: list[str] = []
    try:
        _drive(schedule, workers, context, str(store.root), messages, options.progress)
    finally:
        for worker in workers:
            _stop(worker)
    return Outcome(final_statuses(plan, store), messages, schedule.stopped)


def _drive(schedule: Schedule, workers: list[Worker], context, store_root: str, messages: list[str], progress: bool) -> None:
    oom_before = oom_kills()
    while not schedule.done():
        for i, worker in enumerate(workers):
            if worker.task is None and (task := schedule.next_task()) is not None:
                if not worker.process.is_alive():  # died while idle (killed from outside): a fresh one takes the task
                    workers[i] = worker = _start_worker(context, worker.env, store_root)
                worker.task = task
                worker.conn.send(task)
                _say(progress, f"started {task['label']}")
        busy = [w for w in workers if w.task is not None]
        if not busy:
            break
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        for i, worker in enumerate(workers):
            if worker.task is None or (worker.conn not in ready and worker.process.sentinel not in ready):
                continue
            try:
                result = worker.conn.recv()
            except (EOFError, OSError):  # the worker died mid-task
                worker.process.join()
                result = crash_result(worker.process.exitcode, oom_before)
                oom_before = oom_kills()
                workers[i] = _start_worker(context, worker.env, store_root)
            task, worker.task = worker.task, None
            line = schedule.finished(task, result)
            _say(progress, line or f"finished {task['label']}")
            if line:
                messages.append(line)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(f"slimlab: {line}", flush=True)


def _stop(worker: Worker) -> None:
    try:
        worker.conn.send(None)
    except (BrokenPipeError, OSError):
        pass
    worker.process.join(timeout=5)
    if worker.process.is_alive():
        worker.process.terminate()
        worker.process.join()
