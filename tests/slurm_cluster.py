"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd run from a temp dir and are stopped by pid.

Use the session-scoped `slurm_cluster` fixture by listing this module in `pytest_plugins` (root conftest or a test module;
importing the fixture into several modules would start one cluster per module), or
`with start_cluster(tmp_dir, max_array_size=...) as cluster:` for a cluster of your own.
Needs root and Debian's slurm-wlm + munge (`.ci/system-deps`); skips with the reason where they are missing.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from slimlab.executors.slurm import parse_record

PARTITION = "debug"
START_TIMEOUT_S = 30
STOP_GRACE_S = 5
TERMINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


@dataclass
class SlurmCluster:
    """A running cluster: what a subprocess needs to reach it, and helpers to query it."""

    env: dict[str, str]
    conf_dir: Path
    log_dir: Path
    partition: str
    node: str
    cpus: int
    max_array_size: int
    munge_socket: Path

    def run(self, cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a slurm command (sbatch, squeue, scontrol, scancel, ...) against this cluster; never raises on failure."""
        return subprocess.run(cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)

    def sbatch(self, *args: str) -> str:
        """Submit with `sbatch --parsable ARGS` and return the job id; fails the test when sbatch does."""
        proc = self.run(["sbatch", "--parsable", *args])
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job -o ID` as one dict per record (an array gives one per task); [] when unknown."""
        proc = self.run(["scontrol", "show", "job", "-o", job_id])
        return [parse_record(line) for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []

    def wait_for(self, job_id: str, states: set[str], timeout: float = 30) -> list[dict[str, str]]:
        """Poll until every record of the job is in one of states; return the records."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.jobs(job_id)
            if records and all(r.get("JobState") in states for r in records):
                return records
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout}s: {self.jobs(job_id)}")

    def wait_done(self, job_id: str, timeout: float = 30) -> list[dict[str, str]]:
        """Poll until every record of the job is in a terminal state; return the records."""
        return self.wait_for(job_id, TERMINAL_STATES, timeout)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_spec() -> dict[str, int]:
    """CPUs, topology and memory as `slurmd -C` reports them for this machine."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    pairs = (token.partition("=") for token in line.split())
    return {k: int(v) for k, _, v in pairs if v.isdigit()}


def write_conf(root: Path, munge_socket: Path, node: str, spec: dict[str, int], max_array_size: int) -> Path:
    """Write slurm.conf (and an empty plugstack.conf) under root/etc; return the slurm.conf path."""
    etc = root / "etc"
    (etc / "plugstack.conf").write_text("")
    memory = max(spec["RealMemory"] - max(spec["RealMemory"] // 20, 256), 256)
    topology = " ".join(f"{k}={spec[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore") if k in spec)
    lines = [
        "ClusterName=slimlabtest",
        f"SlurmctldHost={node}",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket},cred_expire=5",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"PlugStackConfig={etc / 'plugstack.conf'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",
        "JobRequeue=1",
        f"MaxArraySize={max_array_size}",
        "MinJobAge=600",
        "ReturnToService=2",
        "KillWait=5",
        "InactiveLimit=0",
        f"NodeName={node} {topology} RealMemory={memory} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = etc / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def log_tail(path: Path, n: int = 15) -> str:
    """The last n lines of a log file, or a note that it is missing."""
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


class Daemons:
    """The processes this cluster started, each with its log, stopped by pid in reverse start order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        """Start one daemon in the foreground, stdout/stderr appended to log."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env}, start_new_session=True)
        self.procs.append((name, proc, log))

    def check_alive(self, extra_logs: list[Path]) -> None:
        """Skip the test with the daemon's last log lines when one of them has exited."""
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                tails = "\n".join(f"--- {p}\n{log_tail(p)}" for p in [log, *extra_logs])
                pytest.skip(f"{name} exited with {proc.returncode}:\n{tails}")

    def stop(self) -> None:
        """SIGTERM each daemon by pid, SIGKILL it after a few seconds."""
        for _, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def check_prerequisites() -> None:
    """Skip unless we are root and every slurm/munge binary is installed."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (SlurmUser=root, munged as root)")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM binaries missing: {', '.join(missing)} (run .ci/system-deps)")


def start_munge(run_dir: Path, daemons: Daemons) -> Path:
    """Start munged with its own key, socket, pid, seed and log in run_dir; return the socket path."""
    key_dir = run_dir / "key"
    key_dir.mkdir(mode=0o700)
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = run_dir / "munge.socket"
    daemons.start("munged", ["munged", "--foreground", f"--socket={sock}", f"--key-file={key}",
                             f"--pid-file={run_dir / 'munged.pid'}", f"--log-file={run_dir / 'munged.log'}",
                             f"--seed-file={run_dir / 'munged.seed'}"], run_dir / "munged.out", {})
    wait_until(lambda: sock.exists(), "munged socket", daemons, [run_dir / "munged.log"])
    return sock


def wait_until(ready, what: str, daemons: Daemons, logs: list[Path]) -> None:
    """Poll ready() until true; skip when a daemon dies or START_TIMEOUT_S passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        daemons.check_alive(logs)
        if time.monotonic() > deadline:
            pytest.skip(f"{what} not ready after {START_TIMEOUT_S}s:\n" + "\n".join(f"--- {p}\n{log_tail(p)}" for p in logs))
        time.sleep(0.2)


def node_idle(cluster: SlurmCluster) -> bool:
    """Whether sinfo reports the node idle."""
    proc = cluster.run(["sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t"], timeout=10)
    return proc.returncode == 0 and proc.stdout.strip() == "idle"


def cancel_all(cluster: SlurmCluster, timeout: float = 15) -> None:
    """Cancel every job still queued or running and wait until none is left, so no job step outlives the cluster."""
    cluster.run(["scancel", f"--user={pwd.getpwuid(os.geteuid()).pw_name}"], timeout=10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = cluster.run(["squeue", "-h", "-o", "%i %T"], timeout=10)
        if proc.returncode != 0 or not proc.stdout.strip():
            return
        time.sleep(0.3)


@contextlib.contextmanager
def start_cluster(tmp_dir: Path, max_array_size: int = 8) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd with state under tmp_dir; yield a SlurmCluster; stop them by pid."""
    check_prerequisites()
    root = Path(tmp_dir)
    for sub in ("etc", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged insists on a socket path every user can traverse, which pytest's 0700 tmp dirs are not: a short dir in /tmp.
    munge_dir = Path(tempfile.mkdtemp(prefix="slurm-munge-", dir="/tmp"))
    munge_dir.chmod(0o755)
    daemons = Daemons()
    try:
        sock = start_munge(munge_dir, daemons)
        node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        spec = node_spec()
        conf = write_conf(root, sock, node, spec, max_array_size)
        env = {"SLURM_CONF": str(conf)}
        cluster = SlurmCluster(env=env, conf_dir=conf.parent, log_dir=root / "log", partition=PARTITION, node=node,
                               cpus=spec["CPUs"], max_array_size=max_array_size, munge_socket=sock)
        logs = [root / "log" / "slurmctld.log", root / "log" / "slurmd.log"]
        daemons.start("slurmctld", ["slurmctld", "-D", "-f", str(conf)], root / "log" / "slurmctld.out", env)
        daemons.start("slurmd", ["slurmd", "-D", "-f", str(conf)], root / "log" / "slurmd.out", env)
        wait_until(lambda: node_idle(cluster), f"node {node} idle", daemons, logs)
        try:
            yield cluster
        finally:
            cancel_all(cluster)
    finally:
        daemons.stop()
        shutil.rmtree(munge_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """One real SLURM cluster for the whole test session (MaxArraySize=8, partition `debug`)."""
    with start_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
