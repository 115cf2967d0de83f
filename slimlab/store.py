"""The only writer of results: an SQLite index (WAL) plus one directory per run, every file written atomically."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_STORE = Path(os.environ.get("SLIMLAB_STORE", "store"))
_SCHEMA = """
create table if not exists runs (
    id text primary key, status text not null, name text, config text not null,
    metrics text not null default '{}', notes text not null default '{}', env text not null default '{}',
    error text, host text, created real not null, updated real not null)
"""


@dataclass(frozen=True)
class RunRecord:
    id: str
    status: str
    name: str
    config: dict
    metrics: dict
    notes: dict
    env: dict
    error: str | None
    created: float
    updated: float

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status, "name": self.name, "config": self.config, "metrics": self.metrics,
                "notes": self.notes, "env": self.env, "error": self.error, "created": self.created, "updated": self.updated}


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Store:
    """Runs keyed by config hash under `root`: index.sqlite and runs/<id>/."""

    CONFIG, METRICS, HISTORY, CHECKPOINT = "config.json", "metrics.json", "history.json", "checkpoint.pt"

    def __init__(self, root: str | Path = DEFAULT_STORE):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("pragma journal_mode=wal")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "index.sqlite", timeout=60)
        db.execute("pragma busy_timeout=60000")
        return db

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def training_dir(self, training_key: str) -> Path:
        """Checkpoints of one training stage, shared by every run with the same seed, data, model and train config."""
        return self.root / "trained" / training_key

    @contextlib.contextmanager
    def exclusive(self, name: str, waiting: str = ""):
        """Hold a lock named `name` across processes (an flock on locks/NAME.lock, released if the process dies), so
        two invocations of one study never run the same run, or train the same parent, at once. Prints `waiting`
        while another process holds it. Without fcntl (Windows) it does not lock."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- lifecycle ---
    def start(self, run_id: str, config: dict, name: str = "") -> None:
        """Mark a run as running (creating it, or re-opening a failed/interrupted one)."""
        now = time.time()
        write_atomic(self.run_dir(run_id) / self.CONFIG, _dumps(config))
        with self._connect() as db:
            db.execute("insert into runs (id, status, name, config, host, created, updated) values (?, 'running', ?, ?, ?, ?, ?) "
                       "on conflict(id) do update set status='running', error=null, host=excluded.host, updated=excluded.updated",
                       (run_id, name, json.dumps(config, sort_keys=True), socket.gethostname(), now, now))

    def finish(self, run_id: str, metrics: dict, notes: dict, env: dict, history: list[dict]) -> None:
        folder = self.run_dir(run_id)
        write_atomic(folder / self.HISTORY, _dumps(history))
        write_atomic(folder / self.METRICS, _dumps({"metrics": metrics, "notes": notes, "env": env}))
        with self._connect() as db:
            db.execute("update runs set status='done', metrics=?, notes=?, env=?, error=null, updated=? where id=?",
                       (json.dumps(metrics, sort_keys=True), json.dumps(notes, sort_keys=True), json.dumps(env, sort_keys=True), time.time(), run_id))

    def fail(self, run_id: str, reason: str) -> None:
        with self._connect() as db:
            db.execute("update runs set status='failed', error=?, updated=? where id=?", (reason, time.time(), run_id))

    # --- artifacts ---
    def save_artifact(self, run_id: str, name: str, data: bytes) -> Path:
        path = self.run_dir(run_id) / name
        write_atomic(path, data)
        return path

    def save_training_file(self, training_key: str, name: str, state) -> Path:
        """A checkpoint, snapshot or history of a training stage (torch.save format, written atomically)."""
        import io

        buffer = io.BytesIO()
        torch.save(state, buffer)
        path = self.training_dir(training_key) / name
        write_atomic(path, buffer.getvalue())
        return path

    def load_training_file(self, training_key: str, name: str):
        path = self.training_dir(training_key) / name
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    # --- queries ---
    def get(self, run_id: str) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute("select * from runs where id=?", (run_id,)).fetchone()
            cols = [d[0] for d in db.execute("select * from runs limit 0").description]
        return _record(dict(zip(cols, row))) if row else None

    def history(self, run_id: str) -> list[dict]:
        """A finished run's per-epoch history (training, then what its steps trained or evaluated)."""
        return json.loads((self.run_dir(run_id) / self.HISTORY).read_text())

    def find(self, prefix: str) -> list[RunRecord]:
        return [r for r in self.runs() if r.id.startswith(prefix)]

    def runs(self, status: str | None = None) -> list[RunRecord]:
        with self._connect() as db:
            cur = db.execute("select * from runs" + (" where status=?" if status else "") + " order by created", (status,) if status else ())
            cols = [d[0] for d in cur.description]
            return [_record(dict(zip(cols, row))) for row in cur.fetchall()]


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _record(row: dict) -> RunRecord:
    return RunRecord(row["id"], row["status"], row["name"] or "", json.loads(row["config"]), json.loads(row["metrics"]),
                     json.loads(row["notes"]), json.loads(row["env"]), row["error"], row["created"], row["updated"])


def load_runs(store: str | Path = DEFAULT_STORE, status: str | None = None) -> list[RunRecord]:
    """All runs in a store (optionally only one status)."""
    return Store(store).runs(status)
