"""The slurm executor on a real single-node cluster: trainings before runs, arrays split at MaxArraySize, a job
cancelled mid-way resumed by running the study again, and compute nodes that never write SQLite."""
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config, write_study
from slimlab.store import Store

pytest_plugins = ["slurm_cluster"]


@pytest.fixture
def cluster_env(slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


def _study(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "slimlab", "study", *args, "--executor", "slurm", "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _manifest(store, name="study"):
    return json.loads((store / "studies" / f"{name}.json").read_text())


def _submitted(store, kind: str) -> bool:
    """Whether an array of `kind` is in the study's manifest yet."""
    path = store / "studies" / "study.json"
    return path.exists() and any(j["kind"] == kind for j in _manifest(store).get("slurm_jobs", []))


def _trainings(count_file) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


def _index_rows(store) -> int:
    with sqlite3.connect(store / "index.sqlite") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def test_a_cancelled_job_is_resumed_by_running_the_study_again(cluster_env, tmp_path, counted):
    base = tiny_config(**{"train.epochs": 3, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    path = write_study(tmp_path, {"seeds": [0, 1], "variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store = tmp_path / "store"
    submitted = _study(str(path), "--store", str(store), "--detach")
    assert submitted.returncode == 0 and "slimlab status study" in submitted.stdout, submitted.stderr
    jobs = _manifest(store)["slurm_jobs"]
    # One array for the two trainings, one per parent for its runs (each starts when its own parent has trained).
    assert [(j["kind"], j["size"]) for j in jobs] == [("train", 2), ("run", 2), ("run", 2), ("latency", 1)]
    train_job = jobs[0]["id"]
    cluster_env.wait_for(train_job, {"RUNNING"}, timeout=60)
    time.sleep(2)  # let it get into its training
    cluster_env.run(["scancel", f"{train_job}_0"])
    for job in jobs:
        cluster_env.wait_done(job["id"], timeout=300)
    assert _index_rows(store) == 0  # compute nodes wrote run folders only; nothing touched SQLite
    finished = {r.config["seed"] for r in Store(store).runs("done")}
    assert finished == {1}  # the cancelled parent's runs were cancelled before they started; the other parent's ran

    resumed = _study(str(path), "--store", str(store))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = Store(store).runs()
    assert len(records) == 4 and all(r.status == "done" for r in records)
    assert all(r.notes["latency_status"] == "measured" and "slurm job" in r.env["executor"] for r in records)
    assert len(counted.read_text().splitlines()) <= 2 * 3 + 3  # each parent once, plus the epochs the cancel cut short
    status = subprocess.run([sys.executable, "-m", "slimlab", "status", "--store", str(store)], cwd=REPO, capture_output=True, text=True)
    assert "4 done" in status.stdout and "0 failed" in status.stdout


def test_an_array_larger_than_max_array_size_is_split_and_short_runs_are_packed(cluster_env, tmp_path, counted):
    base = tiny_config(**{"train.epochs": 0, "model.name": "counted:build", "measure.latency": False})
    path = write_study(tmp_path, {"seeds": list(range(10))}, base)
    store = tmp_path / "store"
    done = _study(str(path), "--store", str(store))
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = _manifest(store)["slurm_jobs"]
    assert cluster_env.max_array_size == 8
    assert [(j["kind"], j["size"]) for j in jobs] == [("run", 8), ("run", 2), ("latency", 1)]
    assert len(Store(store).runs("done")) == 10

    packed = write_study(tmp_path, {"name": "packed", "seeds": list(range(10, 15)), "slurm": {"runs_per_task": 3}}, base)
    done = _study(str(packed), "--store", str(store))
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(j["kind"], j["size"]) for j in _manifest(store, "packed")["slurm_jobs"]] == [("run", 2), ("latency", 1)]
    assert len(Store(store).runs("done")) == 15


def test_without_slurm_commands_the_executor_says_so_in_one_line(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    path = write_study(tmp_path, {})
    out = _study(str(path), "--store", str(tmp_path / "store"))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "needs SLURM's `scontrol` on PATH" in out.stderr


def test_an_attached_study_records_a_cancelled_run_as_killed_and_retries_it(cluster_env, tmp_path, counted):
    base = tiny_config(**{"train.epochs": 2, "model.name": "counted:build", "data.options": {"train_size": 512, "test_size": 64}})
    path = write_study(tmp_path, {"variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store = tmp_path / "store"
    driver = subprocess.Popen([sys.executable, "-m", "slimlab", "study", str(path), "--store", str(store), "--executor", "slurm",
                               "--retries", "1", "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not _submitted(store, "latency"):  # each array is recorded as sbatch takes it
        time.sleep(0.2)
    run_job = next(j for j in _manifest(store)["slurm_jobs"] if j["kind"] == "run")
    cluster_env.wait_for(run_job["id"], {"RUNNING"}, timeout=180)
    cluster_env.run(["scancel", run_job["id"]])
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, out + err
    assert "ended CANCELLED (killed)" in err  # what the first round left, said in one line
    records = Store(store).runs()
    assert len(records) == 2 and all(r.status == "done" for r in records)
    assert max(r.attempts for r in records) == 2  # the cancelled run ran again


def test_a_job_told_its_time_is_up_requeues_itself_and_resumes_from_its_checkpoint(cluster_env, tmp_path, counted):
    epochs = 6
    base = tiny_config(**{"train.epochs": epochs, "model.name": "counted:build", "data.options": {"train_size": 512, "test_size": 64}})
    path = write_study(tmp_path, {}, base)
    store = tmp_path / "store"
    assert _study(str(path), "--store", str(store), "--detach").returncode == 0
    jobs = _manifest(store)["slurm_jobs"]
    train_job = jobs[0]["id"]
    deadline = time.time() + 180
    while time.time() < deadline and not list((store / "trained").glob("*/checkpoint.pt")):
        time.sleep(0.1)
    # What SLURM sends SIGNAL_BEFORE_LIMIT_S before the time limit: USR1 to the batch shell, which requeues the job.
    cluster_env.run(["scancel", "--batch", "--signal=USR1", f"{train_job}_0"])
    for job in jobs:
        cluster_env.wait_done(job["id"], timeout=300)
    [record] = cluster_env.jobs(train_job)
    assert record["Restarts"] == "1" and record["JobState"] == "COMPLETED"
    epochs_run = len(counted.read_text().splitlines())
    assert epochs <= epochs_run <= epochs + 1, epochs_run  # resumed from the last epoch checkpoint (from scratch: 8 or more)
    assert [r.status for r in Store(store).runs()] == ["done"]


FAILS_IN_TRAINING = """
from torch import nn
from slimlab.models import create_model


class FailsInTraining(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training:
            raise RuntimeError("this model fails in training")
        return self.inner(x)


def build(num_classes, in_channels, image_size):
    return FailsInTraining(create_model("resnet20", num_classes, in_channels, image_size))
"""


def test_the_runs_of_a_parent_whose_training_fails_are_cancelled_and_say_why(cluster_env, tmp_path, counted):
    # A model that builds and answers in eval mode (so `slimlab study` lets it through; a missing module is refused
    # before anything is submitted), and fails on the node once it trains.
    (tmp_path / "fails_in_training.py").write_text(FAILS_IN_TRAINING)
    base = tiny_config(**{"train.epochs": 1, "model.name": "fails_in_training:build"})
    path = write_study(tmp_path, {"variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    out = _study(str(path), "--store", str(tmp_path / "store"))
    assert out.returncode == 1
    records = Store(tmp_path / "store").runs()
    assert len(records) == 2 and all(r.status == "failed" and r.failure == "error" for r in records)
    assert all("its parent training (slurm job" in r.error and "ended FAILED" in r.error for r in records)


def _wrap(folder, name: str, body: str) -> None:
    """A `name` earlier on the PATH than SLURM's: `body` (bash) may exit; otherwise the real command runs."""
    import shutil

    real = shutil.which(name)
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!/bin/bash\n{body}\nexec {real} \"$@\"\n")
    script.chmod(0o755)


def test_job_queries_failing_for_a_while_resubmit_nothing_and_lose_nothing(cluster_env, tmp_path, counted):
    base = tiny_config(**{"train.epochs": 2, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    path = write_study(tmp_path, {"variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store, wrappers, until = tmp_path / "store", tmp_path / "bin", tmp_path / "fail_until"
    until.write_text("0")
    fail = (f'if [ "$(date +%s)" -lt "$(cat {until})" ]; then echo "slurm_load_jobs error: Unable to contact slurm '
            'controller (connect failure)" >&2; exit 1; fi')
    for name in ("squeue", "sacct"):
        _wrap(wrappers, name, fail)
    _wrap(wrappers, "scontrol", f'if [ "$1" = show ] && [ "$2" = job ]; then {fail}; fi')
    driver = subprocess.Popen([sys.executable, "-m", "slimlab", "study", str(path), "--store", str(store), "--executor", "slurm",
                               "--retries", "1", "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PATH": f"{wrappers}{os.pathsep}{os.environ['PATH']}"})
    deadline = time.time() + 120
    while time.time() < deadline and not _submitted(store, "latency"):  # each array is recorded as sbatch takes it
        time.sleep(0.1)
    until.write_text(str(int(time.time()) + 40))  # longer than one query's tries (31 s of pauses)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, out + err
    assert "cannot ask SLURM how the jobs are doing" in err and "killed" not in err  # unknown, never read as gone
    records = Store(store).runs()
    assert len(records) == 2 and all(r.status == "done" and r.attempts == 1 for r in records)  # nothing ran twice
    assert _trainings(counted) == 2
    assert [j["kind"] for j in _manifest(store)["slurm_jobs"]] == ["train", "run", "latency"]  # nothing resubmitted


@pytest.mark.parametrize("refused_call, kind", [(2, "run"), (3, "latency")])
def test_sbatch_refused_half_way_is_recorded_so_the_rerun_submits_only_what_is_missing(cluster_env, tmp_path, counted,
                                                                                       refused_call, kind):
    base = tiny_config(**{"train.epochs": 2, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    path = write_study(tmp_path, {"variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store, wrappers, calls = tmp_path / "store", tmp_path / "bin", tmp_path / "sbatch_calls"
    _wrap(wrappers, "sbatch", f'echo x >> {calls}; if [ "$(wc -l < {calls})" -eq {refused_call} ]; then echo "sbatch: error: '
          'Batch job submission failed: Job violates accounting/QOS policy (job submit limit)" >&2; exit 1; fi')
    refused = subprocess.run([sys.executable, "-m", "slimlab", "study", str(path), "--store", str(store), "--executor", "slurm",
                              "--detach", "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PATH": f"{wrappers}{os.pathsep}{os.environ['PATH']}"})
    assert refused.returncode == 2 and f"sbatch refused the {kind} jobs" in refused.stderr, refused.stderr
    taken = ["train", "run", "latency"][:refused_call - 1]
    assert [j["kind"] for j in _manifest(store)["slurm_jobs"]] == taken  # what sbatch took, recorded at once
    rerun = _study(str(path), "--store", str(store))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert [j["kind"] for j in _manifest(store)["slurm_jobs"]] == ["train", "run", "latency"]  # nothing twice
    assert _trainings(counted) == 2
    records = Store(store).runs()
    assert [(r.status, r.attempts) for r in records] == [("done", 1), ("done", 1)]
    # a latency job refused while its runs were queued is submitted by the rerun (it waited for them and left the
    # latencies pending before)
    assert all(r.notes.get("latency_status") != "pending" and any(k.endswith("_median_ms") for k in r.metrics) for r in records)


def test_force_and_retrain_on_slurm_run_done_runs_again(cluster_env, tmp_path, counted):
    base = tiny_config(**{"train.epochs": 2, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    path = write_study(tmp_path, {"variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store = tmp_path / "store"
    assert _study(str(path), "--store", str(store)).returncode == 0
    assert _study(str(path), "--store", str(store), "--force").returncode == 0
    assert [(r.status, r.attempts) for r in Store(store).runs()] == [("done", 2), ("done", 2)]
    assert _trainings(counted) == 2  # --force reuses the finished parent
    assert _study(str(path), "--store", str(store), "--retrain").returncode == 0
    assert [(r.status, r.attempts) for r in Store(store).runs()] == [("done", 3), ("done", 3)]
    assert _trainings(counted) == 4  # the parent trained again, and every run made again from it


def _fake(folder, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/bash\n{body}\n")
    (folder / name).chmod(0o755)


def test_forgotten_jobs_are_asked_of_sacct_in_one_call_and_a_failing_query_is_unknown(tmp_path, monkeypatch):
    from slimlab.executors import slurm

    monkeypatch.setattr(slurm, "QUERY_BACKOFF_S", (0.0, 0.0))
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _fake(bin_dir, "squeue", f'echo "squeue $*" >> {log}; echo "7|0|RUNNING"; echo "7|1|PENDING"')
    _fake(bin_dir, "sacct", f'echo "sacct $*" >> {log}; printf "5_0|COMPLETED\\n5_[1-2%%1]|CANCELLED by 0\\n6|TIMEOUT\\n"')
    table = slurm.job_table(["5", "6", "7", "8"])
    assert table == {"5": {0: "COMPLETED", 1: "CANCELLED", 2: "CANCELLED"}, "6": {None: "TIMEOUT"},
                     "7": {0: "RUNNING", 1: "PENDING"}, "8": {}}  # 8: known to neither, gone
    assert log.read_text().splitlines() == ["squeue -h -r -t all -j 5,6,7,8 -o %F|%K|%T",
                                            "sacct -X -n -P -o JobID,State -j 5,6,8"]  # one call each
    _fake(bin_dir, "squeue", f'echo "squeue" >> {log}; echo "Unable to contact slurm controller" >&2; exit 1')
    log.unlink()
    assert slurm.job_table(["5"]) is None and len(log.read_text().splitlines()) == 3  # tried 3 times, then unknown
    with pytest.raises(slurm.SlimlabError, match="nothing was submitted, so nothing runs twice"):
        slurm.active_refs([{"id": "5", "kind": "run", "file": "x", "offset": 0, "size": 1}])


def test_a_run_job_told_its_time_is_up_inside_a_pruning_round_resumes_inside_it(cluster_env, tmp_path, counted):
    step = {"kind": "prune", "method": "l1", "scope": "global", "amount": 0.5, "schedule": "iterative", "rounds": 2,
            "after_round": "finetune", "finetune_epochs": 6}
    base = {**tiny_config(**{"train.epochs": 1, "model.name": "counted:build", "data.options": {"train_size": 512, "test_size": 64}}),
            "steps": [step]}
    store = tmp_path / "store"
    assert _study(str(write_study(tmp_path, {}, base)), "--store", str(store), "--detach").returncode == 0
    jobs = _manifest(store)["slurm_jobs"]
    run_job = next(j["id"] for j in jobs if j["kind"] == "run")
    deadline = time.time() + 300
    while time.time() < deadline and _trainings(counted) < 1 + 3:  # the third epoch of round 1 has begun
        time.sleep(0.05)
    # What SLURM sends SIGNAL_BEFORE_LIMIT_S before the time limit: USR1 to the batch shell, which requeues the job.
    cluster_env.run(["scancel", "--batch", "--signal=USR1", f"{run_job}_0"])
    while time.time() < deadline and _trainings(counted) < 1 + 6 + 3:  # resumed, and the third epoch of round 2 begun
        time.sleep(0.05)
    cluster_env.run(["scontrol", "requeue", f"{run_job}_0"])  # what a preemption does
    for job in jobs:
        cluster_env.wait_done(job["id"], timeout=300)
    [record] = cluster_env.jobs(run_job)
    assert record["Restarts"] == "2" and record["JobState"] == "COMPLETED"
    epochs_run = _trainings(counted)
    assert 1 + 12 <= epochs_run <= 1 + 12 + 2, epochs_run  # resumed inside each round: at most the epoch it was in is lost
    [run] = Store(store).runs()
    assert run.status == "done" and run.attempts == 3
    assert run.env["executor"].endswith("requeued 2 times (1 at the time limit, 1 preempted or its node failed)")


def test_explore_hands_its_stages_to_slurm_and_answers_from_them(cluster_env, tmp_path):
    import yaml
    from test_explore import DATA, _trained_weights

    spec = {"model": "tests.test_explore:tiny_net", "weights": str(_trained_weights(tmp_path / "tiny.pt")), "data": "synthetic",
            "data_options": DATA, "val_size": 160, "calibration_size": 64, "slice_size": 64, "max_drop": 2.0,
            "minimize": "payload", "time_budget": "0s"}  # the engines stage, then the spent budget ends it: the SLURM path, not the whole search
    (tmp_path / "explore.yaml").write_text(yaml.safe_dump(spec))
    store, out = tmp_path / "store", tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "slimlab", "explore", str(tmp_path / "explore.yaml"), "--store", str(store),
                           "--out", str(out), "--executor", "slurm"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    records = Store(store).runs("done")
    assert sorted(r.config["name"].split(":", 1)[1] for r in records) == ["float", "int8 x86"]
    assert all("slurm job" in r.env["executor"] and r.metrics.get("latency_b1_median_ms") for r in records)
    summary = json.loads((out / "recommendation.json").read_text())
    assert summary["pick"]["label"] == "int8 x86" and "time budget was spent after the engines stage" in summary["stopped"]
    assert set(summary["test"]) == {"int8 x86", "float"} and (out / "recommended.pt").exists()
    assert "Recommended: int8 x86" in done.stdout and "report.html" in done.stdout


def test_a_long_wait_polls_the_controller_less_often_and_learns_of_the_end_soon(monkeypatch):
    """A 10-hour study asked squeue every 2 s (18,000 calls); the interval now grows with the wait, to 30 s at most."""
    from slimlab.executors import slurm

    clock, polls, end = [0.0], [], 10 * 3600.0
    def job_table(ids):
        polls.append(clock[0])
        return {"1": {0: "RUNNING" if clock[0] < end else "COMPLETED"}}
    monkeypatch.setattr(slurm, "job_table", job_table)
    monkeypatch.setattr(slurm, "final_statuses", lambda plan, store: {})
    monkeypatch.setattr(slurm.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(slurm.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    assert slurm.wait_for([{"id": "1"}], None, None, False) == {"1": {0: "COMPLETED"}}
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert gaps[:10] == [2.0] * 10 and max(gaps) == pytest.approx(30.0)  # short studies as before: every 2 s
    assert len(polls) < 1300 and polls[-1] - end <= 30.0
