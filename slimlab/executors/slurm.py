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
POLL_SECONDS = 2.0


def slurm(*cmd: str) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a missing one is a one-line error."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlimlabError(f"the slurm executor needs SLURM's `{cmd[0]}` on PATH; run it on a login node of the cluster") from None


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


def job_states(job_id: str) -> dict[int | None, str]:
    """State of each array index of a job (None for a plain job); {} once SLURM has forgotten it."""
    out = slurm("scontrol", "show", "job", "-o", job_id)
    states: dict[int | None, str] = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        record = parse_record(line)
        for index in _indices(record.get("ArrayTaskId")):
            states[index] = record.get("JobState", "UNKNOWN")
    return states


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
            f"trap 'if [ \"${{SLURM_RESTART_COUNT:-0}}\" -lt {MAX_REQUEUES} ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi' USR1\n"
            f"{command} &\nchild=$!\n"
            "wait $child; status=$?\n"  # a trap ends the wait early: wait again while the task still runs
            "while kill -0 $child 2>/dev/null; do wait $child; status=$?; done\n"
            "exit $status\n")


def submit(groups: list[list[dict]], kind: str, folder: Path, settings: dict, store: Store, after: list[str],
           require_success: bool = False) -> list[dict]:
    """Submit task groups as job arrays (split at MaxArraySize, at most max_parallel running at once), after the jobs
    in `after` have ended (or succeeded, when `require_success`: then cancelled if one fails). Returns, per array,
    {"id", "kind", "file", "offset", "size"} for the manifest."""
    if not groups:
        return []
    task_file = folder / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}.json"
    write_atomic(task_file, json.dumps({"store": str(store.root.resolve()), "groups": groups}).encode())
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
    """Of earlier submissions: task id -> array task, for the tasks still queued or running."""
    live = {}
    for job in jobs:
        states = job_states(job["id"])
        refs = task_refs([job]) if states else {}
        live.update({tid: ref for tid, ref in refs.items() if states.get(int(ref.rsplit("_", 1)[1]), "") in ACTIVE})
    return live


def _groups(tasks: list[dict], per_group: int) -> list[list[dict]]:
    return [tasks[i:i + per_group] for i in range(0, len(tasks), per_group)]


def submit_missing(plan: Plan, store: Store, settings: dict, earlier: list[dict], force: bool = False,
                   retrain: bool = False) -> list[dict]:
    """Submit what is neither done nor still queued or running from an earlier submission: the trainings, then each
    parent's runs once it has trained (cancelled if it fails), then the latency job once every run has ended."""
    busy = active_refs(earlier)
    work = select_work(plan, store, force, retrain, busy)
    todo, trainings = work.runs, work.trainings
    if not (todo or trainings or work.pending_latency):
        return []
    folder = store.root / "slurm" / plan.study.name
    jobs = submit([[training_task(t, plan, retrain)] for t in trainings], "train", folder, settings, store, [])
    parents = {**busy, **task_refs(jobs)}
    snapshots = {t.key: t.snapshot_epochs for t in plan.trainings}
    for parent in dict.fromkeys(s.training for s in todo):
        tasks = [run_task(s, plan, snapshots.get(s.training, frozenset()), True, force or retrain) for s in todo if s.training == parent]
        after = [parents[parent]] if parent in parents else []
        jobs += submit(_groups(tasks, int(settings["runs_per_task"])), "run", folder, settings, store, after, require_success=True)
    labels = {s.id: s.planned.label for s in plan.runs}
    latency = [latency_task(i, labels[i]) for i in [s.id for s in todo] + work.pending_latency]
    after = [j["id"] for j in jobs] + sorted({ref.rsplit("_", 1)[0] for ref in busy.values()})
    return jobs + submit([latency], "latency", folder, settings, store, after)


def wait_for(jobs: list[dict], store: Store, plan: Plan, progress: bool) -> None:
    """Poll until no job of `jobs` is queued or running, printing the study's counts when they change."""
    last = None
    while any(state in ACTIVE for job in jobs for state in job_states(job["id"]).values()):
        if progress:
            statuses = list(final_statuses(plan, store).values())
            line = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "running", "failed", "stale") if statuses.count(s))
            if line != last:
                print(f"slimlab: slurm: {line or 'queued'}", flush=True)
                last = line
        time.sleep(POLL_SECONDS)


def record_job_failures(jobs: list[dict], store: Store) -> list[str]:
    """Runs whose job ended without finishing them (cancelled, timed out, preempted, node failure, or never started
    because their parent's training failed): recorded failed with the class the job's final state gives."""
    lines, refs = [], task_refs(jobs)
    states = {job["id"]: job_states(job["id"]) for job in jobs}

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
        jobs = submit_missing(plan, store, settings, earlier, options.force and attempt == 0, options.retrain and attempt == 0)
        store.save_study({**(store.study(plan.study.name) or {}), "slurm_jobs": earlier + jobs})
        if options.detach:
            return Outcome(final_statuses(plan, store), [f"submitted slurm jobs {', '.join(j['id'] for j in jobs) or 'none'}"],
                           submitted=bool(jobs))
        if not jobs and not active_refs(earlier):
            break
        wait_for(earlier + jobs, store, plan, options.progress)
        store.sync()
        messages += record_job_failures(earlier + jobs, store)
        earlier = []  # finished: the next round only looks at the store
        if not any(r.status == "failed" and r.failure in TRANSIENT_FAILURES for r in store.runs()):
            break
    return Outcome(final_statuses(plan, store), messages)


def main(argv: list[str]) -> int:
    """On a compute node: execute the task group this array task stands for, writing run folders only."""
    task_file, offset = Path(argv[0]), int(argv[1])
    data = json.loads(task_file.read_text())
    os.environ.setdefault("SLIMLAB_EXECUTOR", f"slurm job {os.environ.get('SLURM_JOB_ID', '?')} on {os.uname().nodename}")
    import torch

    if os.environ.get("SLIMLAB_THREADS"):
        torch.set_num_threads(int(os.environ["SLIMLAB_THREADS"]))
    store = Store(data["store"], index=False)
    failed = 0
    for task in data["groups"][offset + int(os.environ.get("SLURM_ARRAY_TASK_ID", 0))]:
        record = store.get(task["id"]) if task["kind"] != "train" else None
        if task["kind"] == "run" and record is not None and record.status == "done":
            continue  # done before a requeue
        if task["kind"] == "latency" and (record is None or record.notes.get("latency_status") != "pending"):
            continue
        result = execute_task(task, store)
        if not result["ok"] and task["kind"] == "run":
            record_failure(store, task, result)
        failed += not result["ok"]
        print(f"slimlab: {task['label']}: {'done' if result['ok'] else result['error']}", flush=True)
    return 1 if failed else 0  # a failed training cancels the runs that wait on it (afterok)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
