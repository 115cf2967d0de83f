"""The `slurm` executor: the plan as sbatch job arrays on a SLURM cluster: trainings, then the runs that need them,
then one exclusive job that times every latency alone. Jobs near their time limit requeue themselves and resume from
the last epoch checkpoint.

Compute nodes write run folders only (`Store(index=False)`): SQLite's locking is not safe on NFS or Lustre, so only
the driver (this process, on the login node) touches index.sqlite, and it catches up from the folders. The store, the
Python environment and the data must be on a filesystem every node sees, at the same paths.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from slimlab.errors import SlimlabError
from slimlab.executors import ExecOptions, Outcome, final_statuses, register_executor
from slimlab.executors.schedule import select_work
from slimlab.executors.tasks import execute_task, latency_task, record_failure, run_task, training_task
from slimlab.plan import Plan
from slimlab.atomic import write_atomic
from slimlab.store import TRANSIENT_FAILURES, Store

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
          "RESIZING", "SIGNALING", "STAGE_OUT"}
FAILURE_OF_STATE = {"TIMEOUT": "timeout", "DEADLINE": "timeout", "PREEMPTED": "preempted", "NODE_FAIL": "killed",
                    "BOOT_FAIL": "killed", "CANCELLED": "killed", "OUT_OF_MEMORY": "oom", "FAILED": "error"}
DEFAULTS = {"partition": None, "time_min": 60, "cpus_per_run": 1, "mem_gb": None, "gpus_per_run": 0, "max_parallel": None,
            "runs_per_task": 1, "latency_partition": None, "extra_args": []}
MAX_REQUEUES = 3  # a job that reaches its time limit requeues itself at most this often
SIGNAL_BEFORE_LIMIT_S = 120  # when, before the time limit, the job is told to requeue
POLL_SECONDS = 2.0  # between the first polls of a wait
POLL_MAX_S = 30.0  # between polls once the wait has been long: a tenth of the time waited, at most this
QUERY_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # pauses between the tries of a failed job query: about 30 s in all
COMMAND_TIMEOUT_S = 60
GONE = ("Invalid job id specified",)  # squeue's answer for jobs the controller no longer holds: an answer, not a failure
NO_ACCOUNTING = ("accounting storage is disabled",)  # sacct's, where the cluster keeps no accounting


def slurm(*cmd: str) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a missing one is a one-line error, one that hangs fails as timed out (124)."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        raise SlimlabError(f"the slurm executor needs SLURM's `{cmd[0]}` on PATH; run it on a login node of the cluster") from None
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(cmd), 124, "", f"timed out after {COMMAND_TIMEOUT_S} s")


def query(*cmd: str, answers: tuple[str, ...] = ()) -> subprocess.CompletedProcess | None:
    """A SLURM query, tried again after each pause of QUERY_BACKOFF_S while it fails (an error whose message is in
    `answers` is an answer); None when it kept failing: the answer is unknown, which is never read as "gone"."""
    for pause in (*QUERY_BACKOFF_S, None):
        out = slurm(*cmd)
        if out.returncode == 0 or any(a in out.stderr for a in answers):
            return out
        if pause is None:
            return None
        time.sleep(pause)
    return None


def parse_record(line: str) -> dict[str, str]:
    """One line of `scontrol show job -o` as a dict (values with spaces are glued back to their key)."""
    fields: dict[str, str] = {}
    key = None
    for token in line.split():
        name, sep, value = token.partition("=")
        if sep and name and (name[0].isupper() or key is None):
            key, fields[name] = name, value
        elif key is not None:
            fields[key] += " " + token
    return fields


def job_table(job_ids: list[str]) -> dict[str, dict[int | None, str]] | None:
    """State of each array index (None for a plain job) of each job: one squeue for them all, then one sacct for those
    the controller has forgotten; {} for a job neither knows (gone). None when SLURM could not be asked: unknown."""
    table: dict[str, dict[int | None, str]] = {job_id: {} for job_id in job_ids}
    if not table:
        return table
    out = query("squeue", "-h", "-r", "-t", "all", "-j", ",".join(table), "-o", "%F|%K|%T", answers=GONE)
    if out is None:
        return None
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        job_id, index, state = line.strip().split("|")[:3]
        if job_id in table:
            table[job_id][None if index in ("N/A", "") else int(index)] = state
    forgotten = [job_id for job_id, states in table.items() if not states]
    if forgotten:
        acct = query("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(forgotten), answers=NO_ACCOUNTING)
        if acct is None:
            return None
        for line in acct.stdout.splitlines() if acct.returncode == 0 else []:
            ref, state = line.strip().split("|")[:2]
            job_id, _, spec = ref.partition("_")
            for index in _indices(spec.strip("[]") or None) if job_id in table else []:
                table[job_id][index] = state.split()[0]  # "CANCELLED by 0"
    return table


def _indices(spec: str | None) -> list[int | None]:
    """'3', '2-5%2' or '1,4-6' -> the indices; None for a job that is not an array."""
    if not spec:
        return [None]
    indices = []
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        indices += list(range(int(low), int(high or low) + 1))
    return indices


def max_array_size() -> int:
    """The cluster's MaxArraySize (the largest array index is one less)."""
    for line in slurm("scontrol", "show", "config").stdout.splitlines():
        if line.strip().startswith("MaxArraySize"):
            return int(line.split("=", 1)[1])
    return 1001


def _settings(options: ExecOptions) -> dict:
    settings = {**DEFAULTS, **options.slurm}
    for key in ("time_min", "cpus_per_run", "runs_per_task"):
        if int(settings[key]) < 1:
            raise SlimlabError(f"slurm.{key}: must be at least 1 (got {settings[key]})")
    return settings


def sbatch_args(settings: dict, name: str, folder: Path, exclusive: bool = False) -> list[str]:
    """The sbatch flags of one job: resources, output file, requeue on preemption, a signal before the time limit."""
    args = ["--parsable", f"--job-name={name}", f"--time={int(settings['time_min'])}", "--requeue", "--open-mode=append",
            f"--output={folder}/%x-%A_%a.out", f"--signal=B:USR1@{SIGNAL_BEFORE_LIMIT_S}"]
    partition = settings["latency_partition"] if exclusive and settings["latency_partition"] else settings["partition"]
    args += [f"--partition={partition}"] if partition else []
    args += ["--exclusive"] if exclusive else [f"--cpus-per-task={int(settings['cpus_per_run'])}"]
    args += [f"--mem={int(settings['mem_gb'])}G"] if settings["mem_gb"] else []
    args += [f"--gres=gpu:{int(settings['gpus_per_run'])}"] if int(settings["gpus_per_run"] or 0) else []
    return args + list(settings["extra_args"] or [])


def batch_script(task_file: Path, offset: int, threads: int | None) -> str:
    """The job's shell: run the task group in the background so the USR1 trap (time limit near) can requeue it."""
    command = shlex.join([sys.executable, "-m", "slimlab.executors.slurm", str(task_file), str(offset)])
    env = f"export OMP_NUM_THREADS={threads} SLIMLAB_THREADS={threads}\n" if threads else ""
    return (f"#!/bin/bash\n{env}"
            f"trap 'if [ \"${{SLURM_RESTART_COUNT:-0}}\" -lt {MAX_REQUEUES} ]; then "
            f"echo limit >> \"{task_file.parent}/.at-limit-$SLURM_JOB_ID\"; scontrol requeue \"$SLURM_JOB_ID\"; fi' USR1\n"
            f"{command} &\nchild=$!\n"
            "wait $child; status=$?\n"  # a trap ends the wait early: wait again while the task still runs
            "while kill -0 $child 2>/dev/null; do wait $child; status=$?; done\n"
            "exit $status\n")


def submit(groups: list[list[dict]], kind: str, folder: Path, settings: dict, store: Store, after: list[str],
           require_success: bool = False, remember: Callable[[dict], None] = lambda job: None) -> list[dict]:
    """Submit task groups as job arrays (split at MaxArraySize, at most max_parallel running at once), after the jobs
    in `after` have ended (or succeeded, when `require_success`: then cancelled if one fails). Returns, per array,
    {"id", "kind", "file", "offset", "size"} for the manifest, each handed to `remember` as soon as sbatch took it."""
    if not groups:
        return []
    task_file = folder / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}.json"
    data = {"store": str(store.root.resolve()), "groups": groups, "submitted": time.time()}
    write_atomic(task_file, json.dumps(data).encode())
    exclusive = kind == "latency"
    limit = 1 if exclusive else max_array_size()
    jobs = []
    for offset in range(0, len(groups), limit):
        size = min(limit, len(groups) - offset)
        script = folder / f"{task_file.stem}-{offset}.sh"
        write_atomic(script, batch_script(task_file, offset, None if exclusive else int(settings["cpus_per_run"])).encode())
        args = sbatch_args(settings, f"slimlab-{kind}", folder, exclusive)
        args.append(f"--array=0-{size - 1}" + (f"%{int(settings['max_parallel'])}" if settings["max_parallel"] else ""))
        if after:
            args += [f"--dependency={'afterok' if require_success else 'afterany'}:{':'.join(after)}"]
            args += ["--kill-on-invalid-dep=yes"] if require_success else []
        out = slurm("sbatch", *args, str(script))
        if out.returncode != 0:
            raise SlimlabError(f"sbatch refused the {kind} jobs: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
        jobs.append({"id": out.stdout.strip().split(";")[0], "kind": kind, "file": str(task_file), "offset": offset, "size": size})
        remember(jobs[-1])  # now: a refusal or Ctrl-C at the next sbatch must not leave this one unrecorded
    return jobs


def task_refs(jobs: list[dict]) -> dict[str, str]:
    """Task id -> the array task that holds it ('JOBID_INDEX'), for dependencies and for explaining failures."""
    refs = {}
    for job in jobs:
        groups = json.loads(Path(job["file"]).read_text())["groups"]
        for index in range(job["size"]):
            refs.update({task["id"]: f"{job['id']}_{index}" for task in groups[job["offset"] + index]})
    return refs


def active_refs(jobs: list[dict]) -> dict[str, str]:
    """Of earlier submissions: task id -> array task, for the tasks still queued or running. When SLURM cannot say,
    nothing is submitted: what may still be queued would run twice."""
    table = job_table([job["id"] for job in jobs])
    if table is None:
        raise SlimlabError("cannot ask SLURM about this study's earlier jobs (squeue kept failing for about "
                           f"{sum(QUERY_BACKOFF_S):.0f} s); nothing was submitted, so nothing runs twice: run the study "
                           "again once the controller answers")
    live = {}
    for job in jobs:
        states = table[job["id"]]
        refs = task_refs([job]) if states else {}
        live.update({tid: ref for tid, ref in refs.items() if states.get(int(ref.rsplit("_", 1)[1]), "") in ACTIVE})
    return live


def _groups(tasks: list[dict], per_group: int) -> list[list[dict]]:
    return [tasks[i:i + per_group] for i in range(0, len(tasks), per_group)]


def submit_missing(plan: Plan, store: Store, settings: dict, earlier: list[dict], force: bool = False,
                   retrain: bool = False, remember: Callable[[dict], None] = lambda job: None) -> list[dict]:
    """Submit what is neither done nor still queued or running from an earlier submission: the trainings, then each
    parent's runs once it has trained (cancelled if it fails), then the latency job once every run has ended."""
    busy = active_refs(earlier)
    work = select_work(plan, store, force, retrain, busy)
    todo, trainings = work.runs, work.trainings
    labels = {s.id: s.planned.label for s in plan.runs}
    # Runs still queued from an earlier call whose latency job was never submitted (sbatch refused it, or Ctrl-C came
    # first): their latency is due once they end, or a rerun would wait for them and leave it pending. A run and its
    # latency share a task id; a live latency job, submitted after the runs, holds the id in `busy` (active_refs).
    latency_jobs = {j["id"] for j in earlier if j.get("kind") == "latency"}
    untimed = [i for i, ref in busy.items() if i in labels and ref.rsplit("_", 1)[0] not in latency_jobs]
    if not (todo or trainings or work.pending_latency or untimed):
        return []
    folder = store.root / "slurm" / plan.study.name
    jobs = submit([[training_task(t, plan, retrain)] for t in trainings], "train", folder, settings, store, [], remember=remember)
    parents = {**busy, **task_refs(jobs)}
    snapshots = {t.key: t.snapshot_epochs for t in plan.trainings}
    for parent in dict.fromkeys(s.training for s in todo):
        tasks = [run_task(s, plan, snapshots.get(s.training, frozenset()), True, force or retrain) for s in todo if s.training == parent]
        after = [parents[parent]] if parent in parents else []
        jobs += submit(_groups(tasks, int(settings["runs_per_task"])), "run", folder, settings, store, after, True, remember)
    latency = [latency_task(i, labels[i]) for i in [s.id for s in todo] + work.pending_latency + untimed]
    after = [j["id"] for j in jobs] + sorted({ref.rsplit("_", 1)[0] for ref in busy.values()})
    return jobs + submit([latency], "latency", folder, settings, store, after, remember=remember)


def poll_interval(waited: float) -> float:
    """Seconds to the next squeue: 2 at first, then a tenth of the time waited so far, at most 30. A study of hours
    asks the controller about 15x less often than every 2 s (submitit's watcher backs off alike), and learns that its
    jobs have ended at most 30 s (and 10% of the wait) late."""
    return min(POLL_MAX_S, max(POLL_SECONDS, waited / 10))


def wait_for(jobs: list[dict], store: Store, plan: Plan, progress: bool) -> dict[str, dict]:
    """Poll until SLURM says no job of `jobs` is queued or running (while it cannot be asked, they may be: wait on),
    printing the study's counts when they change; returns the jobs' final states."""
    last, started = None, time.monotonic()
    while True:
        table = job_table([job["id"] for job in jobs])
        if table is not None and not any(state in ACTIVE for states in table.values() for state in states.values()):
            return table
        if table is None:
            line = "cannot ask SLURM how the jobs are doing (squeue kept failing); waiting until it answers"
        else:
            statuses = list(final_statuses(plan, store).values())
            line = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "running", "failed", "stale") if statuses.count(s)) or "queued"
        if line != last and (progress or table is None):
            print(f"slimlab: slurm: {line}", flush=True, file=sys.stderr if table is None else sys.stdout)
            last = line
        time.sleep(poll_interval(time.monotonic() - started))


def record_job_failures(jobs: list[dict], store: Store, states: dict[str, dict]) -> list[str]:
    """Runs whose job ended without finishing them (cancelled, timed out, preempted, node failure, or never started
    because their parent's training failed): recorded failed with the class the job's final state (`states`) gives."""
    lines, refs = [], task_refs(jobs)

    def state_of(ref: str) -> str:
        job_id, index = ref.rsplit("_", 1)
        return states.get(job_id, {}).get(int(index), "UNKNOWN")

    for job in (j for j in jobs if j["kind"] == "run"):
        groups = json.loads(Path(job["file"]).read_text())["groups"]
        for index in range(job["size"]):
            for task in groups[job["offset"] + index]:
                record = store.get(task["id"])
                if record is not None and record.status not in ("running", "stale"):
                    continue
                ref, state = f"{job['id']}_{index}", state_of(f"{job['id']}_{index}")
                parent = refs.get(task.get("training"))
                if parent and state_of(parent) != "COMPLETED":  # it never started: its parent did not train
                    ref, state = parent, state_of(parent)
                    why = f"its parent training (slurm job {ref}) ended {state}"
                else:
                    why = f"slurm job {ref} ended {state}"
                failure = FAILURE_OF_STATE.get(state, "killed")
                record_failure(store, task, {"failure": failure, "error": why})
                lines.append(f"{task['label']}: {why} ({failure})")
    return lines


@register_executor("slurm")
def execute_slurm(plan: Plan, store: Store, options: ExecOptions) -> Outcome:
    """Submit what is missing; unless detached, wait, record what the jobs left unfinished, and resubmit transient
    failures up to `retries` times."""
    settings = _settings(options)
    earlier, messages = (store.study(plan.study.name) or {}).get("slurm_jobs", []), []
    for attempt in range(options.retries + 1):
        if attempt:  # the earlier rounds' jobs have all ended: the manifest keeps this round's
            store.save_study({**(store.study(plan.study.name) or {}), "slurm_jobs": []})
        jobs = submit_missing(plan, store, settings, earlier, options.force and attempt == 0, options.retrain and attempt == 0,
                              lambda job: remember_job(store, plan.study.name, job))
        if options.detach:
            return Outcome(final_statuses(plan, store), [f"submitted slurm jobs {', '.join(j['id'] for j in jobs) or 'none'}"],
                           submitted=bool(jobs))
        if not jobs and not active_refs(earlier):
            break
        states = wait_for(earlier + jobs, store, plan, options.progress)
        store.sync()
        messages += record_job_failures(earlier + jobs, store, states)
        earlier = []  # finished: the next round only looks at the store
        if not any(r.status == "failed" and r.failure in TRANSIENT_FAILURES for r in store.runs()):
            break
    return Outcome(final_statuses(plan, store), messages)


def since_submission(task: dict, store: Store, submitted: float) -> dict | None:
    """The task, or None when this attempt of its job has nothing to do: a run done before a requeue is skipped, and
    with --force (or --retrain) only one done since the job was submitted, so a done run is run again, once."""
    if task["kind"] == "train":
        return task
    record = store.get(task["id"])
    if task["kind"] == "run" and record is not None and record.status == "done":
        return None if not task.get("force") or record.updated >= submitted else task
    if task["kind"] == "latency" and (record is None or record.notes.get("latency_status") != "pending"):
        return None
    return task


def remember_job(store: Store, study: str, job: dict) -> None:
    """Add one submitted array to the study's manifest, the moment sbatch has taken it."""
    manifest = store.study(study) or {"name": study}
    store.save_study({**manifest, "slurm_jobs": [*manifest.get("slurm_jobs", []), job]})


def requeues(folder: Path, job: str) -> str:
    """How often this job was requeued, and why: its own trap near the time limit leaves a line in .at-limit-JOB;
    any other requeue was SLURM's (preemption, a node failure)."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if not restarts:
        return ""
    try:
        at_limit = len((folder / f".at-limit-{job}").read_text().splitlines())
    except OSError:
        at_limit = 0
    return f", requeued {restarts} times ({at_limit} at the time limit, {restarts - at_limit} preempted or its node failed)"


def main(argv: list[str]) -> int:
    """On a compute node: execute the task group this array task stands for, writing run folders only."""
    task_file, offset = Path(argv[0]), int(argv[1])
    data = json.loads(task_file.read_text())
    job = os.environ.get("SLURM_JOB_ID", "?")
    os.environ.setdefault("SLIMLAB_EXECUTOR", f"slurm job {job} on {os.uname().nodename}{requeues(task_file.parent, job)}")
    import torch

    if os.environ.get("SLIMLAB_THREADS"):
        torch.set_num_threads(int(os.environ["SLIMLAB_THREADS"]))
    store = Store(data["store"], index=False)
    failed = 0
    for task in data["groups"][offset + int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))]:
        task = since_submission(task, store, data.get("submitted", 0.0))
        if task is None:
            continue
        result = execute_task(task, store)
        if not result["ok"] and task["kind"] == "run":
            record_failure(store, task, result)
        failed += not result["ok"]
        print(f"slimlab: {task['label']}: {'done' if result['ok'] else result['error']}", flush=True)
    return 1 if failed else 0  # a failed training cancels the runs that wait on it (afterok)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
