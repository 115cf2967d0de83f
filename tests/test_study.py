"""Studies at scale: plan expansion, stages shared across worker processes, crashes, kills and resumes, the store as
the truth (index rebuilt from folders, stale runs), and run identity across renames."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config, write_study
from slimlab.errors import ConfigError
from slimlab.executors import ExecOptions, execute
from slimlab.plan import load_study, plan_stages
from slimlab.store import Store

def _execute(path, store_root, executor="local", **options):
    plan = plan_stages(load_study(path))
    return execute(plan, Store(store_root), executor, ExecOptions(progress=False, **options))


def _trainings(count_file: Path) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


# --- the plan -------------------------------------------------------------------------------------------------


def test_grid_zip_seeds_and_exclude_expand_to_the_expected_points_and_labels(tmp_path):
    path = write_study(tmp_path, {
        "name": "seedgrid",
        "grid": {"steps.0.amount": [0.0, 0.5, 0.8]},
        "zip": {"steps.0.rounds": [1, 3], "steps.0.schedule": ["oneshot", "iterative"]},
        "seeds": [0, 1],
        "set": {"steps": [{"kind": "prune", "amount": 0.5}], "data.name": "synthetic"},
        "exclude": [{"steps.0.amount": 0.0, "steps.0.rounds": 3}]})
    study = load_study(path)
    assert len(study.runs) == 3 * 2 * 2 - 2  # amount 0 with 3 rounds is dropped for both seeds
    assert study.axes == ["steps.0.amount", "steps.0.rounds", "steps.0.schedule", "seed"]  # data.name is the same everywhere
    assert study.runs[0].label == "steps.0.amount=0.0/steps.0.rounds=1/steps.0.schedule=oneshot/seed=0"
    assert {(r.config.steps[0]["rounds"], r.config.steps[0]["schedule"]) for r in study.runs} == {(1, "oneshot"), (3, "iterative")}
    assert not any(r.config.steps[0]["amount"] == 0.0 and r.config.steps[0]["rounds"] == 3 for r in study.runs)
    assert {r.config.seed for r in study.runs} == {0, 1}
    plan = plan_stages(study)
    assert len(plan.trainings) == 2 and plan.training_epochs == 2  # one parent per seed, 1 epoch each
    assert all(r.training in {t.key for t in plan.trainings} for r in plan.runs)


@pytest.mark.parametrize("extra, match", [
    ({"zip": {"seed": [0, 1], "train.lr": [0.1]}}, "same length"),
    ({"grid": {"seed": [0]}, "seeds": [1]}, "axis twice"),
    ({"grid": {"seed": [0, 1]}, "exclude": [{"train.lr": 0.1}]}, "train.lr is not an axis"),
    ({"grid": {"seed": [0, 1]}, "exclude": [{"seed": 7}]}, "matches no point"),
    ({"seeds": [-1]}, "seeds: expected a list of non-negative integers"),
    ({"data": {"name": "synthetic"}}, "use `slimlab run`"),
    ({"slurm": {"partitoin": "gpu"}}, "slurm: unknown key"),
    ({"name": "a/b"}, "name: 'a/b' must be"),
])
def test_a_malformed_study_axis_fails_in_one_sentence(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_study(write_study(tmp_path, extra))


def test_an_experiment_file_given_to_study_says_which_verb_it_is_for(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    with pytest.raises(ConfigError, match="experiment file: use `slimlab run`"):
        load_study(path)


def test_a_study_whose_factory_is_not_there_stops_before_it_writes_anything(tmp_path, monkeypatch, capsys):
    from slimlab.cli import main

    path = write_study(tmp_path, {"grid": {"seed": [0, 1]}}, tiny_config(**{"model.name": "usernets_absent:buidl"}))
    monkeypatch.chdir(tmp_path)
    assert main(["study", str(path), "--store", "store", "--executor", "inline", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: model.name: no module named 'usernets_absent' in the current folder" in err
    assert not (tmp_path / "store").exists()  # no failed records, no manifest: nothing was started
    (tmp_path / "usernets_absent.py").write_text("def build(num_classes):\n    raise NotImplementedError\n")
    assert main(["study", str(path), "--store", "store", "--executor", "inline", "--quiet"]) == 2
    assert "has no callable 'buidl'; its functions: build" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_a_study_whose_weights_do_not_fit_stops_before_it_writes_anything(tmp_path, monkeypatch, capsys):
    import torch

    from slimlab.cli import main

    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    path = write_study(tmp_path, {"variants": {"mine": {"model.weights": str(tmp_path / "other.pt")}, "fresh": {}}},
                       tiny_config(**{"train.epochs": 1}))
    monkeypatch.chdir(tmp_path)
    assert main(["study", str(path), "--store", "store", "--executor", "inline", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path} (mine): model.weights: {tmp_path / 'other.pt'} does not fit the model: 128 of the model's 128 entries are not in the file" in err
    assert not (tmp_path / "store").exists()  # not one failed record per run


def _cli(*args, cwd=REPO, **kw):
    return subprocess.run([sys.executable, "-m", "slimlab", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def test_the_dry_run_creates_nothing_and_prints_each_run_once(tmp_path, counted):
    path = write_study(tmp_path, {"grid": {"seed": [0, 1]}, "variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}})
    store = tmp_path / "nothing-here"
    out = _cli("study", str(path), "--store", str(store), "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("study: 4 runs, 2 trainings (2 training epochs); 4 to run")
    assert [line.split()[-1] for line in lines[1:]] == ["a/seed=0", "b/seed=0", "a/seed=1", "b/seed=1"]
    assert all(len(line.split()[0]) == 8 for line in lines[1:])  # short ids
    assert not store.exists()


# --- executing -------------------------------------------------------------------------------------------------


def test_six_runs_sharing_two_trainings_train_exactly_twice_across_two_workers(tmp_path, counted):
    path = write_study(tmp_path, {"seeds": [0, 1], "variants": {
        "a": {}, "b": {"measure": {"batch_sizes": [2]}}, "c": {"measure": {"batch_sizes": [3]}}}})
    outcome = _execute(path, tmp_path / "store", jobs=2)
    assert list(outcome.statuses.values()) == ["done"] * 6
    pids = counted.read_text().splitlines()
    assert len(pids) == 2  # one epoch per parent, two parents
    records = Store(tmp_path / "store").runs()
    assert all(r.env["torch_threads"] == 1 and "2 workers x 1 threads" in r.env["executor"] for r in records)
    # With two workers, latency is timed at the end, alone: no run keeps it pending.
    assert all(r.notes["latency_status"] == "measured" and
               r.metrics[f"latency_b{r.config['measure']['batch_sizes'][0]}_median_ms"] > 0 for r in records)


def test_a_crashing_run_is_recorded_and_the_others_finish(tmp_path, counted):
    path = write_study(tmp_path, {"variants": {"fine": {}, "segfault": {"model.options": {"crash": True}},
                                                 "also_fine": {"seed": 3}}})
    outcome = _execute(path, tmp_path / "store", jobs=2)
    statuses = {r.name.split(":")[1]: r for r in Store(tmp_path / "store").runs()}
    assert sorted(outcome.statuses.values()) == ["done", "done", "failed"]
    assert statuses["fine"].status == statuses["also_fine"].status == "done"
    crashed = statuses["segfault"]
    assert crashed.status == "failed" and crashed.failure == "error" and "SIGSEGV" in crashed.error


def test_a_killed_worker_is_retried_as_transient_and_errors_are_not(tmp_path, counted):
    marker = tmp_path / "killed-once"
    path = write_study(tmp_path, {"variants": {"killed": {"model.options": {"kill_once": str(marker)}},
                                                 "broken": {"model.name": "nowhere_module:build", "seed": 5}}})
    outcome = _execute(path, tmp_path / "store", jobs=1, retries=2)
    records = {r.name.split(":")[1]: r for r in Store(tmp_path / "store").runs()}
    assert marker.exists() and records["killed"].status == "done"  # SIGKILLed once, retried, done
    assert records["broken"].failure == "error" and records["broken"].attempts == 1  # an error is never retried
    assert sorted(outcome.statuses.values()) == ["done", "failed"]


def test_the_study_stops_after_k_runs_fail_with_the_same_error(tmp_path, counted):
    variants = {f"v{i}": {"model.name": "nowhere_module:build", "seed": i, "train.epochs": 0} for i in range(4)}
    outcome = _execute(write_study(tmp_path, {"variants": variants}), tmp_path / "store", executor="inline", max_same_failures=2)
    assert list(outcome.statuses.values()).count("failed") == 2 and list(outcome.statuses.values()).count("missing") == 2
    assert outcome.stopped.startswith("stopped after 2 failures with the same error")


def _study_process(path, store):
    return subprocess.Popen([sys.executable, "-m", "slimlab", "study", str(path), "--store", str(store), "-j", "2", "--quiet"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_when(proc, condition, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and not condition() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # driver and workers at once, as a node failure would
    proc.wait()


def test_a_study_killed_twice_resumes_with_one_done_record_per_point_and_repeats_no_finished_work(tmp_path, counted):
    base = tiny_config(**{"train.epochs": 3, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    path = write_study(tmp_path, {"seeds": [0, 1, 2], "variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store = tmp_path / "store"

    def done():
        return [r for r in Store(store).runs() if r.status == "done"]

    _kill_when(_study_process(path, store), lambda: (store / "trained").exists() and any((store / "trained").glob("*/checkpoint.pt")))
    _kill_when(_study_process(path, store), lambda: len(done()) >= 2)
    finished_before = {r.id: (r.attempts, r.metrics["top1"], r.metrics["model_size_bytes"]) for r in done()}
    assert finished_before, "killed too early to test resuming"
    assert len(finished_before) < 6, "killed too late to test resuming"
    final = _cli("study", str(path), "--store", str(store), "-j", "2", "--quiet")
    assert final.returncode == 0, final.stderr
    records = Store(store).runs()
    assert len(records) == 6 and all(r.status == "done" for r in records)
    # A run done before a kill is not run again (its latency, if pending, is timed now: that is unfinished work).
    assert all((r.attempts, r.metrics["top1"], r.metrics["model_size_bytes"]) == finished_before[r.id]
               for r in records if r.id in finished_before)
    assert _trainings(counted) <= 3 * 3 + 2 * 2  # 3 parents x 3 epochs, plus the epoch each kill cut short in each worker


def _children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process parents from /proc")
def test_workers_die_with_their_driver_when_it_is_sigkilled(tmp_path, counted):
    base = tiny_config(**{"train.epochs": 20, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    store = tmp_path / "store"
    driver = _study_process(write_study(tmp_path, {"seeds": [0, 1]}, base), store)
    deadline = time.time() + 120
    while time.time() < deadline and _trainings(counted) < 2 and driver.poll() is None:
        time.sleep(0.05)  # both workers are in their trainings
    workers = _children(driver.pid)
    assert len(workers) >= 2 and driver.poll() is None, "the study ended before its workers could be seen"
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone, not its process group
    driver.wait()
    time.sleep(5)
    orphans = [pid for pid in workers if _alive(pid)]
    for pid in orphans:  # the old behaviour: do not leave them computing after the test
        os.kill(pid, signal.SIGKILL)
    assert orphans == []
    assert {r.status for r in Store(store).runs()} <= {"stale"}  # their runs resume at the next invocation


def test_a_second_driver_on_a_live_study_says_so_in_one_line_and_every_run_is_done_once(tmp_path, counted):
    base = tiny_config(**{"train.epochs": 3, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}})
    path = write_study(tmp_path, {"seeds": [0, 1], "variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}}, base)
    store = tmp_path / "store"
    first = _study_process(path, store)
    deadline = time.time() + 120
    while time.time() < deadline and _trainings(counted) < 1:
        time.sleep(0.05)
    started = time.time()
    second = _cli("study", str(path), "--store", str(store), "--quiet")
    assert time.time() - started < 30 and first.poll() is None  # it did not wait on the first one's locks
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"study study is already being run by pid {first.pid} on " in second.stderr
    assert first.wait(timeout=600) == 0
    records = Store(store).runs()
    assert len(records) == 4 and all(r.status == "done" and r.attempts == 1 for r in records)
    assert _trainings(counted) == 2 * 3  # each parent trained once
    assert not (store / "locks" / "study-study.driver.json").exists()  # the first one, done, is no longer the driver


def test_a_ticket_and_its_control_on_two_workers_train_each_shared_round_once(tmp_path, counted):
    step = {"kind": "prune", "method": "l1", "scope": "global", "amount": 0.8, "schedule": "iterative", "rounds": 3,
            "after_round": "finetune", "finetune_epochs": 1}
    base = {**tiny_config(**{"train.epochs": 1, "model.name": "counted:build", "data.options": {"train_size": 256, "test_size": 64}}),
            "steps": [step]}
    variants = {"ticket": {}, "control": {"steps": [{**step, "control": "random_mask"}]}}
    outcome = _execute(write_study(tmp_path, {"variants": variants}, base), tmp_path / "store", jobs=2)
    assert list(outcome.statuses.values()) == ["done", "done"], outcome.messages
    # The parent's epoch, rounds 1 and 2 once (whichever run came first; the other waited and reused them), and each
    # run's own last round: 1 + 2 + 2 epochs. Without a lock both runs compute rounds 1 and 2: 1 + 3 + 3.
    assert _trainings(counted) == 5
    ticket, control = sorted(Store(tmp_path / "store").runs(), key=lambda r: r.name != "study:ticket")
    for r in (1, 2):
        assert control.metrics[f"round{r}_top1"] == ticket.metrics[f"round{r}_top1"]
    # --retrain trains the parent again, and the rounds made from the old parent are not reused (issue 26 from outside:
    # they were, so the records pointed at weights they were not made from): 1 + 2 + 2 epochs again, not 1 + 2
    out = _cli("study", str(tmp_path / "study.yaml"), "--store", str(tmp_path / "store"), "--quiet", "--retrain")
    assert out.returncode == 0, out.stderr
    assert _trainings(counted) == 10


def test_the_index_deleted_and_rebuilt_gives_the_same_runs_json(tmp_path, counted):
    store = tmp_path / "store"
    _execute(write_study(tmp_path, {"seeds": [0, 1]}), store, executor="inline")
    before = _cli("runs", "--store", str(store), "--json")
    (store / "index.sqlite").unlink()
    rebuilt = _cli("reindex", "--store", str(store))
    assert rebuilt.returncode == 0 and "indexed 2 runs" in rebuilt.stdout
    assert _cli("runs", "--store", str(store), "--json").stdout == before.stdout != ""
    for suffix in ("", "-wal", "-shm"):
        (store / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert _cli("runs", "--store", str(store), "--json").stdout == before.stdout  # rebuilt on its own when missing


def test_records_written_without_the_index_reach_it_later(tmp_path):
    from slimlab.config import build_config
    from slimlab.run import run

    store = tmp_path / "store"
    record = run(build_config(tiny_config(**{"train.epochs": 1})), Store(store, index=False), progress=False)
    assert record.status == "done" and not (store / "index.sqlite").exists()  # a compute node never touches SQLite
    assert [r.id for r in Store(store).runs()] == [record.id]


def test_a_run_whose_process_died_is_stale_and_the_next_invocation_finishes_it(tmp_path, counted):
    path = write_study(tmp_path, {})
    plan = plan_stages(load_study(path))
    store = Store(tmp_path / "store")
    store.save_study(plan.manifest())  # as `slimlab study` does before it executes
    run_id = plan.runs[0].id
    store.start(run_id, plan.runs[0].planned.config.model_dump(mode="json"), "study:default")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store.beat(run_id)
    beat = json.loads((store.run_dir(run_id) / store.HEARTBEAT).read_text())
    (store.run_dir(run_id) / store.HEARTBEAT).write_text(json.dumps({**beat, "pid": int(dead.stdout)}))
    assert store.get(run_id).status == "stale"
    (store.run_dir(run_id) / store.HEARTBEAT).write_text(json.dumps({**beat, "host": "node17", "time": time.time() - 3600}))
    assert store.get(run_id).status == "stale"  # another host's run: judged by its heartbeat's age
    (store.run_dir(run_id) / store.HEARTBEAT).write_text(json.dumps({**beat, "host": "node17", "time": time.time()}))
    assert store.get(run_id).status == "running"
    out = _cli("status", "--store", str(tmp_path / "store"))
    assert "1 running" in out.stdout
    (store.run_dir(run_id) / store.HEARTBEAT).write_text(json.dumps({**beat, "pid": int(dead.stdout)}))
    assert "1 stale" in _cli("status", "--store", str(tmp_path / "store")).stdout
    _execute(path, tmp_path / "store", executor="inline")
    record = store.get(run_id)
    assert record.status == "done" and record.attempts == 2


def test_renaming_a_study_or_its_variants_runs_nothing_again(tmp_path, counted):
    path = write_study(tmp_path, {"name": "first", "variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}})
    _execute(path, tmp_path / "store", executor="inline")
    renamed = write_study(tmp_path, {"name": "second", "variants": {"x": {}, "y": {"measure": {"batch_sizes": [2]}}}})
    out = _cli("study", str(renamed), "--store", str(tmp_path / "store"), "--dry-run")
    assert "2 done" in out.stdout.splitlines()[0] and "to run" not in out.stdout


def test_stored_files_are_group_readable_and_killed_writes_leave_no_temporary_files(tmp_path):
    root = tmp_path / "store"
    store = Store(root)
    store.save_artifact("r1", "model.pt", b"x")
    assert (root / "runs" / "r1" / "model.pt").stat().st_mode & 0o040
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    import socket

    leftover = root / "runs" / "r1" / f".record.json.{socket.gethostname()}.{dead}.abc123.tmp"
    ours = root / "runs" / "r1" / f".record.json.{socket.gethostname()}.{os.getpid()}.def456.tmp"
    leftover.write_text("half")
    ours.write_text("being written")
    Store(root)
    assert not leftover.exists() and ours.exists()


def test_workers_split_the_cores_and_take_one_gpu_each(monkeypatch):
    from slimlab.executors import local

    monkeypatch.setattr(local, "available_cores", lambda: 8)
    envs = local.worker_environments(2, [])
    assert [e["SLIMLAB_THREADS"] for e in envs] == ["4", "4"] and "CUDA_VISIBLE_DEVICES" not in envs[0]
    gpus = local.worker_environments(1, ["0", "3"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in gpus] == ["0", "3"] and gpus[0]["SLIMLAB_THREADS"] == "4"
    with pytest.raises(ConfigError, match="-j 9: this machine has 8 cores"):
        local.worker_environments(9, [])


def test_a_parent_reused_from_other_code_says_so(tmp_path, monkeypatch):
    from slimlab import measure
    from slimlab.config import build_config
    from slimlab.run import run

    monkeypatch.setattr(measure, "code_version", lambda: {"commit": "aaaa", "dirty": False})
    first = run(build_config(tiny_config()), tmp_path / "store", progress=False)
    assert "trained_by_code" not in first.notes
    monkeypatch.setattr(measure, "code_version", lambda: {"commit": "bbbb", "dirty": True})
    second = run(build_config(tiny_config(**{"measure.batch_sizes": [2]})), tmp_path / "store", progress=False)
    assert second.notes["trained_by_code"] == "the parent was trained at commit aaaa, this run is at bbbb (dirty)"


def test_force_runs_a_done_study_again_on_its_parents_and_retrain_trains_them_again(tmp_path, counted):
    path = write_study(tmp_path, {"variants": {"a": {}, "b": {"measure": {"batch_sizes": [2]}}}})
    store = tmp_path / "store"
    for flags, trainings, attempts in (((), 1, 1), (("--force",), 1, 2), (("--retrain",), 2, 3)):
        out = _cli("study", str(path), "--store", str(store), "--quiet", *flags)
        assert out.returncode == 0, out.stderr
        assert _trainings(counted) == trainings and {r.attempts for r in Store(store).runs()} == {attempts}, flags


def test_status_gives_an_eta_from_the_work_done_so_far(tmp_path, counted):
    from slimlab.status import study_progress

    path = write_study(tmp_path, {"seeds": [0, 1, 2]})
    store = Store(tmp_path / "store")
    plan = plan_stages(load_study(path))
    store.save_study(plan.manifest())
    assert study_progress(store, plan.manifest())["eta_seconds"] is None  # nothing to go by yet: unknown, not "finished"
    from slimlab.run import RunOptions, run

    first = run(plan.runs[0].planned.config, store, options=RunOptions(progress=False))
    progress = study_progress(store, plan.manifest())
    assert progress["counts"]["done"] == 1 and progress["counts"]["queued"] == 2
    epoch = store.training_progress(plan.runs[0].training)["seconds"]
    assert progress["eta_seconds"] == pytest.approx(2 * epoch + 2 * first.seconds)  # 2 parents of 1 epoch, 2 runs left


@pytest.mark.parametrize("flags, match", [(["-j", "0"], "-j/--jobs: must be at least 1"),
                                          (["--retries", "-1"], "--retries: must be at least 0"),
                                          (["--detach"], "--detach: only the slurm executor")])
def test_impossible_study_flags_are_one_line_before_anything_is_written(tmp_path, flags, match):
    out = _cli("study", str(write_study(tmp_path, {})), "--store", str(tmp_path / "store"), *flags)
    assert out.returncode == 2 and match in out.stderr.strip().splitlines()[-1]  # the error's one line, after argparse's usage
    assert not (tmp_path / "store").exists()


def test_an_orphaned_worker_ends_quietly(tmp_path, capfd):
    """A worker whose driver is gone (killed) exits 0 without a traceback: its stderr is the next driver's log too."""
    import multiprocessing as mp

    from slimlab.executors.local import _start_worker, worker_environments

    worker = _start_worker(mp.get_context("spawn"), worker_environments(1, [])[0], str(tmp_path / "store"))
    worker.conn.close()  # the driver's end of the pipe, as when the driver is killed
    worker.process.join(timeout=120)
    assert worker.process.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err
