"""The real SLURM test cluster behaves the way an sbatch-based executor relies on (see docs/slurm-test-cluster.md)."""
from __future__ import annotations

from pathlib import Path

pytest_plugins = ["slurm_cluster"]  # registers the session fixture once, however many modules ask for it


def timestamps(path: Path) -> list[float]:
    """The `date +%s.%N` lines a job wrote, as floats."""
    return [float(line) for line in path.read_text().split()]


def test_wrap_job_writes_file_with_submitter_env_and_cwd(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_TEST_MARK", "from-submitter")
    monkeypatch.chdir(tmp_path)
    job = slurm_cluster.sbatch("-o", "out.txt", "--wrap", 'echo "$SLURM_TEST_MARK $PWD" > result.txt')
    [record] = slurm_cluster.wait_done(job)
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0")
    assert (tmp_path / "result.txt").read_text().split() == ["from-submitter", str(tmp_path)]


def test_two_one_cpu_jobs_run_at_once(slurm_cluster):
    jobs = [slurm_cluster.sbatch("-o", "/dev/null", "-c", "1", "--wrap", "sleep 5") for _ in range(2)]
    for job in jobs:
        slurm_cluster.wait_for(job, {"RUNNING"}, timeout=10)
    for job in jobs:
        slurm_cluster.run(["scancel", job])


def test_throttled_array_runs_its_tasks_one_at_a_time(slurm_cluster, tmp_path):
    script = 'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID" > ids_$SLURM_ARRAY_TASK_ID; date +%s.%N; sleep 1; date +%s.%N'
    job = slurm_cluster.sbatch("--array=0-2%1", f"--chdir={tmp_path}", "-o", "t_%a.txt", "--wrap", script)
    records = slurm_cluster.wait_done(job)
    assert sorted(r["ArrayTaskId"] for r in records) == ["0", "1", "2"]
    assert {r["JobState"] for r in records} == {"COMPLETED"}
    spans = sorted(timestamps(tmp_path / f"t_{i}.txt") for i in range(3))
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert [(tmp_path / f"ids_{i}").read_text().split() for i in range(3)] == [[job, str(i)] for i in range(3)]


def test_array_past_max_array_size_is_rejected(slurm_cluster):
    top = slurm_cluster.max_array_size - 1
    too_many = slurm_cluster.run(["sbatch", "-o", "/dev/null", f"--array=0-{top + 1}", "--wrap", "true"])
    high_index = slurm_cluster.run(["sbatch", "-o", "/dev/null", f"--array={top + 1}-{top + 2}", "--wrap", "true"])
    assert too_many.returncode != 0 and "Invalid job array specification" in too_many.stderr
    assert high_index.returncode != 0, "an index >= MaxArraySize is refused too: chunks must be renumbered from 0"
    slurm_cluster.wait_done(slurm_cluster.sbatch("-o", "/dev/null", f"--array=0-{top}", "--wrap", "true"))


def test_scancel_of_running_job_reports_cancelled(slurm_cluster):
    job = slurm_cluster.sbatch("-o", "/dev/null", "--wrap", "sleep 60")
    slurm_cluster.wait_for(job, {"RUNNING"})
    assert slurm_cluster.run(["scancel", job]).returncode == 0
    [record] = slurm_cluster.wait_done(job, timeout=15)
    assert (record["JobState"], record["ExitCode"]) == ("CANCELLED", "0:15")
    assert "JobState=CANCELLED" in slurm_cluster.run(["scontrol", "show", "job", "-o", job]).stdout


def test_afterany_dependency_waits_for_the_first_job(slurm_cluster, tmp_path):
    first = slurm_cluster.sbatch("-o", str(tmp_path / "first"), "--wrap", "sleep 2; date +%s.%N; exit 3")
    second = slurm_cluster.sbatch("-o", str(tmp_path / "second"), f"--dependency=afterany:{first}", "--wrap", "date +%s.%N")
    slurm_cluster.wait_for(first, {"RUNNING"})
    assert "afterany:" + first in slurm_cluster.jobs(second)[0]["Dependency"]
    assert slurm_cluster.jobs(second)[0]["JobState"] == "PENDING"
    [record] = slurm_cluster.wait_done(second)
    assert record["JobState"] == "COMPLETED"
    assert slurm_cluster.jobs(first)[0]["JobState"] == "FAILED"
    assert timestamps(tmp_path / "second")[0] >= timestamps(tmp_path / "first")[0]


def test_requeue_of_running_job_runs_it_again(slurm_cluster, tmp_path):
    out = tmp_path / "requeue.txt"
    script = 'echo "start $SLURM_RESTART_COUNT"; sleep 3'
    job = slurm_cluster.sbatch("-o", str(out), "--open-mode=append", "--wrap", script)
    slurm_cluster.wait_for(job, {"RUNNING"})
    assert slurm_cluster.run(["scontrol", "requeue", job]).returncode == 0
    [record] = slurm_cluster.wait_done(job, timeout=40)
    assert (record["JobState"], record["Restarts"]) == ("COMPLETED", "1")
    starts = [line.split() for line in out.read_text().splitlines() if line.startswith("start")]
    assert starts == [["start"], ["start", "1"]]
