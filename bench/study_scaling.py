"""How a study scales over executors: N small real runs serially in one process (`inline`), with `local -j 2`, and
through `slurm` on a single-node cluster this script starts; prints wall times, per-run overhead and efficiency.

    python bench/study_scaling.py [--runs 40] [--executors serial,inline,local,slurm] [--jobs 2]

The runs: ResNet-20 on CIFAR-10 (JPEG copy) resized to 16x16, 2,000 training images (class-balanced), one epoch, top-1
on 500 test images, batch-1 latency (2 warm-up, 5 timed passes). Each run is its own seed, so it trains its own parent:
the plan has N trainings and N runs, all independent, as in the seed's script (one SLURM job per grid point). About
4-5 s per run inline on an otherwise idle 2-core Xeon. Each executor starts from a fresh store; the dataset cache is
warmed first.

Two serial baselines, both the `inline` executor in this process: `serial` gives each run one thread, the same work
a local worker or a 1-CPU SLURM task does per run; `inline` gives each run every core (torch's default), so its runs
are already parallel inside. Figures (W workers: -j for local, the node's CPUs for slurm, 1 for serial and inline):
  speedup               = wall(serial) / wall(executor), and against inline
  parallel efficiency   = wall(serial) / (wall(executor) x W)      1.0 = every core busy with the serial run's work
  overhead per run      = (wall(executor) x W - wall(serial)) / N  core-seconds an executor adds per run on top of the
                          same work done serially: worker start-up, per-task data loading, scheduling, the latency stage
Target (issue 15): local -j 2 at least 1.7x faster than serial on 2 cores; overhead under 0.5 s per run.
"""
import argparse
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from slimlab.executors import ExecOptions, execute  # noqa: E402
from slimlab.measure import cpu_model  # noqa: E402
from slimlab.plan import load_study, plan_stages  # noqa: E402
from slimlab.run import prepare_data  # noqa: E402
from slimlab.store import Store  # noqa: E402

# One run of the study; `seeds` gives each run its own parent training.
BASE = {
    "data": {"name": "cifar10_jpeg", "val_size": 0, "train_subset": 2000, "test_subset": 500, "options": {"image_size": 16}},
    "model": {"name": "resnet20"},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.1, "warmup_epochs": 0},
    "measure": {"batch_sizes": [1], "warmup": 2, "repeats": 5, "energy": False},
}


def write_study(folder: Path, runs: int) -> Path:
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = folder / "scaling.yaml"
    path.write_text(yaml.safe_dump({"name": "scaling", "base": "base.yaml", "seeds": list(range(runs))}))
    return path


def machine_cpu() -> float:
    """Core-seconds the whole machine has been busy since boot (from /proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of the children it has waited for (the local executor's workers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def cores_busy(seconds: float = 2.0) -> float:
    """Cores busy on the whole machine over the next `seconds`: what else is using the CPU before a phase starts."""
    busy = machine_cpu()
    time.sleep(seconds)
    return (machine_cpu() - busy) / seconds


@contextlib.contextmanager
def slurm_cluster(folder: Path):
    """A single-node SLURM cluster (tests/slurm_cluster.py) with the driver pointed at it; None where it cannot start."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import pytest
        from slurm_cluster import start_cluster
    except ImportError as exc:
        print(f"slurm: skipped ({exc})")
        yield None
        return
    try:
        with start_cluster(folder, max_array_size=1001) as cluster:
            saved = dict(os.environ)
            os.environ.update(cluster.env)
            try:
                yield cluster
            finally:
                os.environ.clear()
                os.environ.update(saved)
    except pytest.skip.Exception as exc:  # start_cluster skips with the reason (no root, no slurm-wlm, a daemon died)
        print(f"slurm: skipped: {str(exc).splitlines()[0]}")
        yield None


def run_executor(name: str, study_path: Path, folder: Path, jobs: int, runs_per_task: int = 1) -> dict | None:
    """Execute the study with one executor in a fresh store; its wall time, workers and the runs' records."""
    store_root = folder / f"store-{name}"
    settings = {}
    with contextlib.ExitStack() as stack:
        if name == "slurm":
            cluster = stack.enter_context(slurm_cluster(folder / "slurm"))
            if cluster is None:
                return None
            settings = {"partition": cluster.partition, "cpus_per_run": 1, "time_min": 30, "runs_per_task": runs_per_task}
            workers = cluster.cpus
        else:
            workers = jobs if name == "local" else 1
        if name == "serial":  # one thread per run, as each local worker and each 1-CPU slurm task has
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, threads)
        plan = plan_stages(load_study(study_path), device="cpu")
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"{name}: {len(plan.runs)} runs, {len(plan.trainings)} trainings; before start: {cores_busy():.2f} cores busy, "
              f"load average {load}", flush=True)
        options = ExecOptions(jobs=jobs if name == "local" else 1, progress=False, slurm=settings)
        busy0, own0, start = machine_cpu(), own_cpu(), time.perf_counter()
        outcome = execute(plan, Store(store_root), "inline" if name == "serial" else name, options)
        wall = time.perf_counter() - start
        busy, own = machine_cpu() - busy0, own_cpu() - own0
    # What else ran meanwhile: the machine's busy core-seconds minus this benchmark's own. SLURM jobs are not our
    # children (slurmstepd runs them), so for slurm only the machine's total is known.
    other = f"{(busy - own) / wall:.2f} cores used by other processes" if name != "slurm" else "other processes not separable"
    print(f"{name}: {wall:.1f} s wall; machine {busy / wall:.2f} cores busy on average ({other})", flush=True)
    records = [r for r in Store(store_root).runs() if r.id in outcome.statuses]
    done = sum(r.status == "done" for r in records)
    if done < len(plan.runs):
        print(f"{name}: only {done} of {len(plan.runs)} runs done", flush=True)
    return {"wall": wall, "workers": workers, "runs": len(plan.runs), "done": done, "records": records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--executors", default="serial,inline,local,slurm",
                        help="comma-separated, run in this order (serial: inline with one thread per run)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="local: worker processes")
    parser.add_argument("--runs-per-task", type=int, default=1, help="slurm: runs packed into one array task")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run, e.g. data.train_subset=4000")
    parser.add_argument("--keep", help="keep the stores in this folder (default: a temporary folder, removed)")
    args = parser.parse_args()
    executors = [e.strip() for e in args.executors.split(",") if e.strip()]

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="study-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in (o.split("=", 1) for o in args.overrides):
        node = BASE
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    study_path = write_study(folder, args.runs)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before start: "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"runs: {args.runs} x ResNet-20 at {BASE['data']['options']['image_size']}px, {BASE['data']['train_subset']} "
          f"train images x {BASE['train']['epochs']} epoch, test on {BASE['data']['test_subset']}; each its own training")
    prepare_data(load_study(study_path).runs[0].config, progress=False)  # decode and cache the dataset, untimed

    results = {}
    try:
        for name in executors:
            if (result := run_executor(name, study_path, folder, args.jobs, args.runs_per_task)) is not None:
                results[name] = result
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print()
    print(f"{'executor':10} {'workers':>7} {'wall s':>8} {'s/run':>6} {'speedup':>8} {'vs inline':>9} {'efficiency':>10} "
          f"{'overhead s/run':>15} {'train s/run':>12}")
    base, inline = results.get("serial"), results.get("inline")
    for name, r in results.items():
        n = r["runs"]
        train = sum(rec.metrics.get("train_seconds", 0.0) for rec in r["records"]) / max(r["done"], 1)
        speedup = f"{base['wall'] / r['wall']:.2f}x" if base else "-"
        versus = f"{inline['wall'] / r['wall']:.2f}x" if inline else "-"
        efficiency = f"{base['wall'] / (r['wall'] * r['workers']):.2f}" if base else "-"
        overhead = f"{(r['wall'] * r['workers'] - base['wall']) / n:+.2f}" if base else "-"
        print(f"{name:10} {r['workers']:7d} {r['wall']:8.1f} {r['wall'] / n:6.2f} {speedup:>8} {versus:>9} {efficiency:>10} "
              f"{overhead:>15} {train:12.2f}")
    if base and "local" in results:
        local = results["local"]
        speedup = base["wall"] / local["wall"]
        overhead = (local["wall"] * local["workers"] - base["wall"]) / local["runs"]
        print(f"target: local -j {local['workers']} >= 1.7x faster than serial: {speedup:.2f}x "
              f"({'met' if speedup >= 1.7 else 'MISSED'}); overhead < 0.5 s/run: {overhead:+.2f} "
              f"({'met' if overhead < 0.5 else 'MISSED'})")
    print(f"CPU after: load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0 if all(r["done"] == r["runs"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
