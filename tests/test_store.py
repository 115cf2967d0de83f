"""The store on a shared filesystem: readers need no write access and change nothing; the index is never in WAL mode."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_config, write_study
from slimlab.errors import SlimlabError
from slimlab.executors import ExecOptions, execute
from slimlab.plan import load_study, plan_stages
from slimlab.store import Store


def _study_store(tmp_path) -> Path:
    """Two done runs through the driver, one failed run written by a 'compute node' (folders only), and a day-old
    leftover temporary file: a store whose index is behind its folders, as a reader finds one on a cluster."""
    store = tmp_path / "store"
    plan = plan_stages(load_study(write_study(tmp_path, {"seeds": [0, 1]}, tiny_config(**{"train.epochs": 1}))))
    execute(plan, Store(store), "inline", ExecOptions(progress=False))
    node = Store(store, index=False)
    node.start("0123456789abcdef", {"seed": 9}, "study:from-a-node")
    node.fail("0123456789abcdef", "RuntimeError: on the node", "error")
    leftover = store / "runs" / ".record.json.elsewhere.1.x.tmp"
    leftover.write_text("{")
    os.utime(leftover, (time.time() - 3 * 86400,) * 2)
    return store


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def _as_reader() -> list[str]:
    """Root ignores file permissions: run the reader as `nobody` then, so a write it tries is refused."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to read the store as an unprivileged user")
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _read_only_copy(store: Path) -> Path:
    """The store copied where any user may read it, every folder and file then made read-only."""
    top = Path(tempfile.mkdtemp(prefix="slimlab-ro-"))
    top.chmod(0o755)
    copy = top / "store"
    shutil.copytree(store, copy)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return copy


def test_a_store_the_user_may_only_read_reports_and_nothing_in_it_changes(tmp_path):
    copy = _read_only_copy(_study_store(tmp_path))
    before = _snapshot(copy)
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HOME": str(copy.parent)}
        out = copy.parent / "report"  # the page goes where the reader may write; the store stays as it was
        out.mkdir()
        out.chmod(0o777)
        results = {args[0]: subprocess.run([*_as_reader(), sys.executable, "-m", "slimlab", *args, "--store", str(copy)],
                                           cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
                   for args in (["runs", "--json"], ["status", "study"], ["show", "0123"], ["studies"], ["table", "study"],
                                ["recommend", "study"], ["report", "study", "--out", str(out)])}
        for name, result in results.items():
            assert result.returncode == 0, f"{name}: {result.stderr}"
        runs = [json.loads(line) for line in results["runs"].stdout.splitlines()]
        assert sorted(r["status"] for r in runs) == ["done", "done", "failed"]  # the node's record, which the index lacks
        assert "2 done" in results["status"].stdout and "RuntimeError: on the node" in results["show"].stdout
        assert (out / "index.html").exists()
        assert _snapshot(copy) == before  # no index row, no journal, no lock, the leftover temp file left alone
    finally:
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(copy.parent)


def test_reading_commands_write_nothing_even_where_they_could(tmp_path):
    store = _study_store(tmp_path)
    before = _snapshot(store)
    for args in (["runs", "--json"], ["status", "study"], ["show", "0123"]):
        result = subprocess.run([sys.executable, "-m", "slimlab", *args, "--store", str(store)], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert _snapshot(store) == before


def test_a_read_only_store_refuses_a_write_in_one_line(tmp_path):
    store = _study_store(tmp_path)
    reader = Store(store, readonly=True)
    with pytest.raises(SlimlabError, match="opened read-only"):
        reader.start("fedcba9876543210", {}, "x")
    with pytest.raises(SlimlabError, match="opened read-only"):
        reader.reindex()
    assert len(reader.runs()) == 3


def test_the_index_uses_a_rollback_journal_not_wal_and_reindex_still_rebuilds_it(tmp_path):
    store = _study_store(tmp_path)
    with sqlite3.connect(store / "index.sqlite") as db:
        assert db.execute("pragma journal_mode").fetchone()[0] == "delete"  # WAL needs one host's shared memory
    assert not (store / "index.sqlite-wal").exists() and not (store / "index.sqlite-shm").exists()
    with sqlite3.connect(store / "index.sqlite") as db:  # an index from before: WAL, converted when a writer opens it
        db.execute("pragma journal_mode=wal")
    assert Store(store).reindex() == 3
    with sqlite3.connect(store / "index.sqlite") as db:
        assert db.execute("pragma journal_mode").fetchone()[0] == "delete"


def test_a_driver_on_another_host_is_live_while_its_heartbeat_is_fresh_and_stale_after(tmp_path):
    """Issue 26: a second driver on a shared filesystem, from another node, sees the first by its heartbeat alone."""
    from slimlab.store import STALE_AFTER_SECONDS, StudyBusy

    store = Store(tmp_path / "store")
    (store.root / "locks").mkdir(parents=True, exist_ok=True)
    beat = store.root / "locks" / "study-s.driver.json"
    beat.write_text(json.dumps({"host": "node17.cluster", "pid": 4242, "time": time.time() - 5}))
    with pytest.raises(StudyBusy, match=r"^study s is already being run by pid 4242 on node17.cluster, heartbeat \d+ s ago"):
        with store.driving("s"):
            pytest.fail("drove a study another node drives")
    beat.write_text(json.dumps({"host": "node17.cluster", "pid": 4242, "time": time.time() - STALE_AFTER_SECONDS - 60}))
    with store.driving("s"):  # a heartbeat older than STALE_AFTER_SECONDS: that driver is gone
        assert json.loads(beat.read_text())["pid"] == os.getpid()
    assert not beat.exists()
