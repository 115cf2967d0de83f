"""Job layers on a real SLURM cluster: slimlab's executor against submitit's, for the same N short jobs.

slimlab's layer: `submit` (one job array, each task's shell the executor's own with its USR1 trap) and `wait_for` (one
`squeue` per poll for all jobs, `sacct` for forgotten ones, a failed query retried after 1, 2, 4, 8, 16 s). submitit's:
`SlurmExecutor.map_array` and `Job.wait` (a result file per task, a shared `sacct` watcher). Each job sleeps a few
seconds. Per scenario: wall time from the first submit to "all detected finished", the SLURM commands called (counted
by wrapper scripts first on PATH that log and exec the real one), what was resubmitted and what was reported lost.
Scenarios: clean; `squeue` and `sacct` failing their first K calls (K within slimlab's retries, then past them); one
task cancelled while still pending (it never runs, so it leaves no result file).

    python bench/slurm_job_layer.py            # root, slurm-wlm and munge (.ci/system-deps), pip install submitit

It starts the test cluster of tests/slurm_cluster.py (no accounting: `sacct` always fails there, as it does on a
cluster without slurmdbd); nothing here trains a model.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

WRAPPED = ("sbatch", "squeue", "sacct", "scontrol", "scancel")
WRAPPER = """#!/bin/bash
echo "{name}" >> {log}
n=$(grep -cx "{name}" {log})
if [ "$n" -le {fail} ]; then echo "{name}: error: injected failure $n of {fail}" >&2; exit 1; fi
exec {real} "$@"
"""


def wrappers(folder: Path, fail: dict[str, int]) -> Path:
    """A bin folder of wrappers that log each call to folder/calls.log and fail the first fail[name] calls."""
    bin_dir, log = folder / "bin", folder / "calls.log"
    bin_dir.mkdir(parents=True)
    log.touch()
    for name in WRAPPED:
        real = shutil.which(name, path=os.environ["REAL_PATH"])
        path = bin_dir / name
        path.write_text(WRAPPER.format(name=name, log=shlex.quote(str(log)), fail=fail.get(name, 0), real=real))
        path.chmod(0o755)
    return bin_dir


def counts(folder: Path) -> dict[str, int]:
    lines = (folder / "calls.log").read_text().split()
    return {name: lines.count(name) for name in WRAPPED}


def scancel_task(job: str) -> None:
    """scancel one array task (the real binary: not counted)."""
    subprocess.run([shutil.which("scancel", path=os.environ["REAL_PATH"]), job], check=True)


def slimlab_layer(n: int, seconds: float, folder: Path, partition: str, cancel: bool, deadline_s: float) -> dict:
    from slimlab.executors import slurm as layer
    from slimlab.store import Store

    store = Store(folder / "store")
    original = layer.batch_script

    def sleeper(task_file, offset, threads):  # the executor's own shell, the task a sleep
        command = shlex.join([sys.executable, "-m", "slimlab.executors.slurm", str(task_file), str(offset)])
        return original(task_file, offset, threads).replace(command, f"sleep {seconds}")
    layer.batch_script, layer.final_statuses = sleeper, lambda plan, store: {}
    settings = {**layer.DEFAULTS, "partition": partition, "time_min": 5}
    groups = [[{"id": f"t{i}", "kind": "run", "label": f"t{i}"}] for i in range(n)]
    started = time.monotonic()
    jobs = layer.submit(groups, "run", folder / "jobs", settings, store, [])
    if cancel:  # the last task: pending while the 2 CPUs run the first ones
        scancel_task(f"{jobs[0]['id']}_{n - 1}")
    states = layer.wait_for(jobs, store, None, False)
    wall = time.monotonic() - started
    # a task cancelled while pending leaves no record at all (squeue, scontrol; no accounting): the executor records
    # the run it held as killed ("ended UNKNOWN"), as it does for any task SLURM cannot account for
    refs = [ref.rsplit("_", 1) for ref in layer.task_refs(jobs).values()]
    ended = [states[job].get(int(index), "no record") for job, index in refs]
    others = [s for s in ended if s != "COMPLETED"]
    return {"wall": wall, "detected": True, "reported": f"{len(others)} {', '.join(sorted(set(others)))}" if others else "none"}


def submitit_layer(n: int, seconds: float, folder: Path, partition: str, cancel: bool, deadline_s: float) -> dict:
    import submitit
    from submitit.slurm.slurm import SlurmJob

    SlurmJob.watcher.clear()
    SlurmJob.watcher._registered = set()
    executor = submitit.SlurmExecutor(folder=folder / "jobs", max_num_timeout=0)
    executor.update_parameters(partition=partition, time=5, cpus_per_task=1)
    started = time.monotonic()
    jobs = executor.map_array(time.sleep, [seconds] * n)
    if cancel:
        scancel_task(jobs[-1].job_id)
    while not all(job.done() for job in jobs) and time.monotonic() - started < deadline_s:
        time.sleep(1)  # what Job.wait does, job by job
    wall = time.monotonic() - started
    missing = [job for job in jobs if not job.done()]
    states = ", ".join(sorted({job.watcher.get_state(job.job_id, mode="cache") for job in missing}))
    return {"wall": wall, "detected": not missing, "reported": f"{len(missing)} never detected ended ({states})" if missing else "none"}


def one_run(layer, folder: Path, fail: dict[str, int], cancel: bool, args, partition: str) -> dict:
    """One layer, one scenario: its result and the SLURM commands it called."""
    os.environ["PATH"] = f"{wrappers(folder, fail)}{os.pathsep}{os.environ['REAL_PATH']}"
    try:
        result = layer(args.jobs, args.seconds, folder, partition, cancel, args.deadline)
    finally:
        os.environ["PATH"] = os.environ["REAL_PATH"]
    return {**result, **counts(folder)}


def row(scenario: str, name: str, results: list[dict], deadline: float) -> list[str]:
    """A table row over the repeats: median wall time (range), each count (its values where they differ)."""
    walls = [r["wall"] for r in results]
    def each(key):
        return "/".join(dict.fromkeys(str(r[key]) for r in results))
    detected = "yes" if all(r["detected"] for r in results) else f"no (gave up at {deadline:.0f} s)"
    return [scenario, name, f"{statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f})", detected,
            *(each(c) for c in WRAPPED[:4]), "/".join(dict.fromkeys(str(max(r["sbatch"] - 1, 0)) for r in results)), each("reported")]


def cpu_model() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "unknown CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds before a layer is said to hang")
    parser.add_argument("--only", default="clean,fail4,fail8,cancel", help="scenarios, comma-separated")
    parser.add_argument("--layers", default="slimlab,submitit", help="layers, comma-separated")
    args = parser.parse_args()
    try:
        import submitit  # noqa: F401
    except ImportError:
        sys.exit("bench/slurm_job_layer.py needs submitit: pip install submitit")
    import pytest
    from slurm_cluster import start_cluster

    logging.getLogger("submitit").setLevel(logging.ERROR)  # its "Bypassing sacct error" warning, once per poll
    os.environ["REAL_PATH"] = os.environ["PATH"]
    scenarios = {"clean": ("clean", {}, False), "fail4": ("squeue, sacct fail 4x", {"squeue": 4, "sacct": 4}, False),
                 "fail8": ("squeue, sacct fail 8x", {"squeue": 8, "sacct": 8}, False),
                 "cancel": ("a pending task scancelled", {}, True)}
    known = {"slimlab": slimlab_layer, "submitit": submitit_layer}
    for flag, given, names in (("--only", args.only, scenarios), ("--layers", args.layers, known)):
        if unknown := [key for key in given.split(",") if key not in names]:
            parser.error(f"{flag}: unknown '{unknown[0]}' (known: {', '.join(names)})")
    scenarios = [scenarios[key] for key in args.only.split(",")]
    layers = {name: known[name] for name in args.layers.split(",")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimlab-joblayer-") as tmp:
        try:
            cluster_cm = start_cluster(Path(tmp) / "cluster")
            cluster = cluster_cm.__enter__()
        except pytest.skip.Exception as e:  # no root, no binaries, a daemon that died: the reason, in one line
            sys.exit(f"bench/slurm_job_layer.py: no SLURM test cluster: {e}")
        try:
            os.environ.update(cluster.env)
            for s, (scenario, fail, cancel) in enumerate(scenarios):
                for name, layer in layers.items():
                    results = [one_run(layer, Path(tmp) / f"{name}-{s}-{k}", fail, cancel, args, cluster.partition)
                               for k in range(args.repeats)]
                    rows.append(row(scenario, name, results, args.deadline))
                    print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
        finally:
            cluster_cm.__exit__(None, None, None)
    print(f"{args.jobs} jobs of `sleep {args.seconds:g}` on a 1-node test cluster ({cluster.cpus} CPUs), {cpu_model()}; "
          f"{args.repeats} repeats: median wall time (range), counts per repeat where they differ")
    headers = ["scenario", "layer", "wall s", "all detected", "sbatch", "squeue", "sacct", "scontrol", "resubmitted", "reported"]
    print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for line in rows:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
