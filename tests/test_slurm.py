"""The slurm executor on a real single-node cluster: trainings before runs, arrays split at MaxArraySize, a job
cancelled mid-way resumed by running the study again, and compute nodes that never write SQLite."""
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
    while time.time() < deadline and "slurm_jobs" not in (_manifest(store) if (store / "studies" / "study.json").exists() else {}):
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
