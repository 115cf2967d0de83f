"""The only writer of results: one folder per run holding its record (the truth), and an SQLite index of them.

Every file is written atomically. `index.sqlite` can be deleted at any time and is rebuilt from the folders
(`Store.reindex`). A store opened with `index=False` (a compute node on a network filesystem, where SQLite's locking
is unsafe) writes the folders only; the next process that opens it with the index picks those records up. A store
opened `readonly` (every reader, and any store this user may not write) creates, changes and deletes nothing: it reads
the index through SQLite's read-only URI where it is current and the folders for the rest. The index uses a rollback
journal, not WAL, which SQLite supports on one host only.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from slimlab.atomic import save_torch_atomic, write_atomic
from slimlab.errors import SlimlabError

DEFAULT_STORE = Path(os.environ.get("SLIMLAB_STORE", "store"))
HEARTBEAT_SECONDS = 15.0  # a running run rewrites its heartbeat this often
STALE_AFTER_SECONDS = 120.0  # a heartbeat older than this, on another host, marks the run stale
TEMP_MAX_AGE_SECONDS = 24 * 3600  # a temporary file this old is a leftover, whoever wrote it
FAILURE_CLASSES = ("error", "diverged", "oom", "timeout", "preempted", "killed")
TRANSIENT_FAILURES = ("oom", "timeout", "preempted", "killed")  # worth retrying; an error or divergence is not
_COLUMNS = ("id", "status", "name", "failure", "error", "host", "created", "updated", "mtime_ns", "record")
_SCHEMA = """
create table if not exists runs (
    id text primary key, status text not null, name text, failure text, error text, host text,
    created real not null, updated real not null, mtime_ns integer not null, record text not null)
"""


@dataclass(frozen=True)
class RunRecord:
    id: str
    status: str  # done, failed, running; `stale` when read: running, but its process is gone
    name: str
    config: dict
    metrics: dict
    notes: dict
    env: dict
    error: str | None
    created: float
    updated: float
    failure: str | None = None  # one of FAILURE_CLASSES when failed
    host: str = ""
    pid: int = 0
    attempts: int = 1  # how many times the run was started
    seconds: float | None = None  # wall time of the last attempt, start to done

    def to_json(self) -> dict:
        return {"id": self.id, "status": self.status, "name": self.name, "config": self.config, "metrics": self.metrics,
                "notes": self.notes, "env": self.env, "error": self.error, "failure": self.failure, "host": self.host,
                "pid": self.pid, "attempts": self.attempts, "seconds": self.seconds, "created": self.created, "updated": self.updated}



def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_leftover_temps(root: Path) -> int:
    """Delete temporary files of writes that were killed: this host's whose process is gone, or any a day old."""
    removed, host, now = 0, socket.gethostname(), time.time()
    for folder, _, files in os.walk(root):
        for name in files:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = Path(folder) / name
            parts = name.split(".")  # ['', target..., host..., pid, random, 'tmp']
            pid = int(parts[-3]) if len(parts) > 4 and parts[-3].isdigit() else 0
            try:
                dead_here = pid and ".".join(parts[-4 - host.count("."):-3]) == host and not _pid_alive(pid)
                if dead_here or now - path.stat().st_mtime > TEMP_MAX_AGE_SECONDS:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def open_store_root(root: Path) -> Path:
    """Create the store folder, or say in one line why it cannot be."""
    if root.exists() and not root.is_dir():
        raise SlimlabError(f"--store {root}: is a file, not a folder; pass a folder (it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlimlabError(f"--store {root}: cannot create the folder ({exc.strerror}); pass a writable folder") from None
    return root


class Store:
    """Runs keyed by config hash under `root`: runs/<id>/record.json (the truth), trained/<key>/, index.sqlite."""

    RECORD, CONFIG, HISTORY, CHECKPOINT, HEARTBEAT = "record.json", "config.json", "history.json", "checkpoint.pt", "heartbeat.json"
    PHASES = "phases"  # runs/<id>/phases/: epoch checkpoints of the run's own training phases, until it is done

    def __init__(self, root: str | Path = DEFAULT_STORE, index: bool = True, readonly: bool = False):
        root = Path(root)
        self.readonly = readonly or (root.is_dir() and not os.access(root, os.W_OK))
        self.root = root if self.readonly else open_store_root(root)
        self.use_index = index
        if index and not self.readonly:  # the driver's job; a compute node does not walk a shared filesystem at every start
            remove_leftover_temps(self.root)
            self._open_index()

    # --- the index ---
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "index.sqlite", timeout=60)
        db.execute("pragma busy_timeout=60000")
        return db

    def _open_index(self) -> None:
        with self._connect() as db:
            db.execute("pragma journal_mode=delete")  # WAL needs memory shared between processes: one host only
            columns = [row[1] for row in db.execute("pragma table_info(runs)")]
            if columns and "record" not in columns:  # an index from before the folders held the records
                _migrate_legacy_rows(self, db)
            db.execute(_SCHEMA)
        self.sync()

    def sync(self) -> int:
        """Bring the index up to date with the run folders (records written elsewhere, e.g. by compute nodes)."""
        if not self.use_index or self.readonly:
            return 0
        with self._connect() as db:
            known = dict(db.execute("select id, mtime_ns from runs"))
            changed = 0
            for path in (self.root / "runs").glob(f"*/{self.RECORD}"):
                mtime = _mtime_ns(path)
                if mtime and known.get(path.parent.name) != mtime:
                    changed += self._index_row(db, path, mtime)
        return changed

    def _index_row(self, db: sqlite3.Connection, path: Path, mtime: int) -> int:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return 0  # removed or not yet complete; the next sync picks it up
        db.execute(f"insert or replace into runs ({', '.join(_COLUMNS)}) values ({', '.join('?' * len(_COLUMNS))})",
                   (rec["id"], rec["status"], rec.get("name", ""), rec.get("failure"), rec.get("error"), rec.get("host", ""),
                    rec["created"], rec["updated"], mtime, json.dumps(rec, sort_keys=True)))
        return 1

    def reindex(self) -> int:
        """Rebuild index.sqlite from the run folders; returns the number of runs indexed."""
        self._check_writable()
        for suffix in ("", "-wal", "-shm", "-journal"):
            (self.root / f"index.sqlite{suffix}").unlink(missing_ok=True)
        self.use_index = True
        self._open_index()
        with self._connect() as db:
            return db.execute("select count(*) from runs").fetchone()[0]

    def _indexed_rows(self) -> dict[str, tuple[int, str]]:
        """Id -> (mtime_ns, record text) from the index, opened read-only; {} when it is missing or cannot be read."""
        path = self.root / "index.sqlite"
        if not self.use_index or not path.is_file():
            return {}
        try:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
                return {i: (m, text) for i, m, text in db.execute("select id, mtime_ns, record from runs")}
        except sqlite3.Error:  # an old WAL index in a read-only folder, a hot journal: the folders are the truth
            return {}

    def _read_rows(self) -> list[dict]:
        """Every record, from the index where its row is current and from its folder otherwise; writes nothing."""
        indexed, rows = self._indexed_rows(), []
        for path in (self.root / "runs").glob(f"*/{self.RECORD}"):
            mtime, (known, text) = _mtime_ns(path), indexed.get(path.parent.name, (None, ""))
            row = json.loads(text) if mtime and known == mtime else self._read(path.parent.name)
            if row:
                rows.append(row)
        return sorted(rows, key=lambda r: r["created"])

    def _check_writable(self) -> None:
        if self.readonly:
            raise SlimlabError(f"--store {self.root}: opened read-only (this user cannot write it); nothing was changed")

    # --- folders ---
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
        path = self._lock_path(name)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    print(waiting, file=sys.stderr, flush=True)
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError as exc:  # a filesystem without flock (Lustre mounted without -o flock): the plan's order is the guard
                print(f"slimlab: {path.parent} cannot be locked ({exc.strerror}); relying on the study's plan to keep "
                      "runs apart", file=sys.stderr, flush=True)
                yield
                return
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- lifecycle ---
    def _write(self, record: dict) -> None:
        self._check_writable()
        record["updated"] = time.time()
        path = self.run_dir(record["id"]) / self.RECORD
        write_atomic(path, _dumps(record))
        if self.use_index:
            with self._connect() as db:
                self._index_row(db, path, _mtime_ns(path))

    def _read(self, run_id: str) -> dict | None:
        try:
            return json.loads((self.run_dir(run_id) / self.RECORD).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def start(self, run_id: str, config: dict, name: str = "") -> None:
        """Mark a run as running (creating it, or re-opening a failed or interrupted one) by this process."""
        self._check_writable()
        old = self._read(run_id) or {}
        write_atomic(self.run_dir(run_id) / self.CONFIG, _dumps(config))
        self._write({"id": run_id, "status": "running", "name": name or old.get("name", ""), "config": config,
                     "metrics": {}, "notes": {}, "env": {}, "error": None, "failure": None,
                     "host": socket.gethostname(), "pid": os.getpid(), "attempts": old.get("attempts", 0) + 1,
                     "created": old.get("created", time.time()), "started": time.time()})
        self.beat(run_id)

    def finish(self, run_id: str, metrics: dict, notes: dict, env: dict, history: list[dict]) -> None:
        write_atomic(self.run_dir(run_id) / self.HISTORY, _dumps(history))
        self._write({**self._read(run_id), "status": "done", "metrics": metrics, "notes": notes, "env": env,
                     "error": None, "failure": None, "finished": time.time()})
        for path in (self.run_dir(run_id) / self.PHASES).glob("*.pt"):  # done: a forced rerun starts its phases afresh
            path.unlink(missing_ok=True)

    def save_phase(self, run_id: str, name: str, state: dict) -> None:
        """The epoch checkpoint of a phase of the run that trains (a pruning round, QAT), to resume inside it."""
        save_torch_atomic(state, self.run_dir(run_id) / self.PHASES / f"{name}.pt")

    def load_phase(self, run_id: str, name: str) -> dict | None:
        import torch

        path = self.run_dir(run_id) / self.PHASES / f"{name}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def fail(self, run_id: str, reason: str, failure: str = "error") -> None:
        """Record a failed run with its reason and class (one of FAILURE_CLASSES)."""
        if failure not in FAILURE_CLASSES:
            raise ValueError(f"failure class {failure!r} is not one of {FAILURE_CLASSES}")
        self._write({**self._read(run_id), "status": "failed", "error": reason, "failure": failure})

    def update_metrics(self, run_id: str, metrics: dict, notes: dict) -> None:
        """Add figures to a done run (its latency, measured later in a stage of its own)."""
        record = self._read(run_id)
        self._write({**record, "metrics": {**record["metrics"], **metrics}, "notes": {**record["notes"], **notes}})

    # --- liveness ---
    def beat(self, run_id: str, **progress) -> None:
        """Say that this process is still working on the run (host, pid, time, and any progress given)."""
        beat = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **progress}
        write_atomic(self.run_dir(run_id) / self.HEARTBEAT, _dumps(beat))

    @contextlib.contextmanager
    def heartbeat(self, run_id: str, every: float = HEARTBEAT_SECONDS):
        """Beat in a background thread while the block runs."""
        with _repeating(lambda: self.beat(run_id), every, f"heartbeat-{run_id}"):
            yield

    @contextlib.contextmanager
    def driving(self, study: str, every: float = HEARTBEAT_SECONDS):
        """Be the one driver of `study` while the block runs, or raise StudyBusy at once, naming the live driver: on
        this host its flock (locks/study-NAME.lock) is held, on another its heartbeat (locks/study-NAME.driver.json)
        is younger than STALE_AFTER_SECONDS. A second driver would otherwise wait a whole run on each run's lock."""
        self._check_writable()
        beat_path = self.root / "locks" / f"study-{study}.driver.json"
        owner = _read_json(beat_path)
        if owner and _driver_alive(owner):  # on another host, or where flock is missing
            raise StudyBusy(study, owner, self.root)
        with self._try_lock(f"study-{study}") as held:
            if not held:
                raise StudyBusy(study, _read_json(beat_path) or {}, self.root)

            def beat():
                write_atomic(beat_path, _dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))

            beat()
            try:
                with _repeating(beat, every, f"driver-{study}"):
                    yield
            finally:
                beat_path.unlink(missing_ok=True)

    def _lock_path(self, name: str) -> Path:
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @contextlib.contextmanager
    def _try_lock(self, name: str):
        """An flock on locks/NAME.lock without waiting: yields whether it is held (True where flock is missing)."""
        try:
            import fcntl
        except ImportError:
            yield True
            return
        path = self._lock_path(name)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            except OSError:  # no flock on this filesystem: the heartbeat is the guard
                yield True
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- artifacts ---
    def save_artifact(self, run_id: str, name: str, data: bytes) -> Path:
        path = self.run_dir(run_id) / name
        write_atomic(path, data)
        return path

    def save_training_file(self, training_key: str, name: str, state) -> Path:
        """A checkpoint, snapshot or history of a training stage (torch.save format, written atomically)."""
        path = self.training_dir(training_key) / name
        save_torch_atomic(state, path)
        return path

    def save_progress(self, training_key: str, progress: dict) -> None:
        """How far a training stage has come (epochs done, of how many, in how many seconds)."""
        write_atomic(self.training_dir(training_key) / "progress.json", _dumps({**progress, "time": time.time()}))

    def training_progress(self, training_key: str) -> dict | None:
        try:
            return json.loads((self.training_dir(training_key) / "progress.json").read_text())
        except (OSError, ValueError):
            return None

    def load_training_file(self, training_key: str, name: str):
        import torch

        path = self.training_dir(training_key) / name
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    # --- studies ---
    def save_study(self, manifest: dict) -> None:
        """A study's plan as last submitted: its runs (id, label, point), trainings and executor details."""
        write_atomic(self.root / "studies" / f"{manifest['name']}.json", _dumps({**manifest, "updated": time.time()}))

    def studies(self) -> list[dict]:
        """Every study manifest in the store, oldest first."""
        found = [json.loads(p.read_text()) for p in (self.root / "studies").glob("*.json")]
        return sorted(found, key=lambda m: m.get("created", m["updated"]))

    def study(self, name: str) -> dict | None:
        path = self.root / "studies" / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # --- queries ---
    def get(self, run_id: str) -> RunRecord | None:
        record = self._read(run_id)
        return self._record(record) if record else None

    def history(self, run_id: str) -> list[dict]:
        """A finished run's per-epoch history (training, then what its steps trained or evaluated)."""
        return json.loads((self.run_dir(run_id) / self.HISTORY).read_text())

    def find(self, prefix: str) -> list[RunRecord]:
        return [r for r in self.runs() if r.id.startswith(prefix)]

    def runs(self, status: str | None = None) -> list[RunRecord]:
        """Every run, oldest first (optionally one status; `stale` is a running run whose process is gone)."""
        if self.use_index and not self.readonly:
            self.sync()
            with self._connect() as db:
                rows = [json.loads(text) for (text,) in db.execute("select record from runs order by created")]
        else:
            rows = self._read_rows()
        records = [self._record(row) for row in rows]
        return [r for r in records if status is None or r.status == status]

    def _record(self, row: dict) -> RunRecord:
        status = "stale" if is_stale(self.root, row) else row["status"]
        return RunRecord(row["id"], status, row.get("name") or "", row["config"], row.get("metrics", {}), row.get("notes", {}),
                         row.get("env", {}), row.get("error"), row["created"], row["updated"], failure=row.get("failure"),
                         host=row.get("host") or "", pid=row.get("pid") or 0, attempts=row.get("attempts", 1),
                         seconds=row["finished"] - row["started"] if row.get("finished") and row.get("started") else None)


class SharedResults:
    """Results that sibling runs of one parent share (a lottery ticket's early pruning rounds, which its controls
    reuse), kept with the parent's training files. A miss holds that result's lock until it is saved (or the block
    ends), so siblings that run at the same time wait for it and it is computed once."""

    PARENT = "trained.pt"  # the parent's weights (run.TRAINED_WEIGHTS): a result made from other weights is stale

    def __init__(self, store: Store, training_key: str):
        self.store, self.key, self.held = store, training_key, {}

    def _parent(self) -> str:
        """The parent's weights file as written last (size and time): `--retrain` rewrites it, and what was derived
        from the old weights (pruning rounds) must not be reused."""
        path = self.store.training_dir(self.key) / self.PARENT
        return f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else ""

    def load(self, name: str):
        lock = contextlib.ExitStack()
        lock.enter_context(self.store.exclusive(f"shared-{self.key}-{name}", f"slimlab: waiting for a sibling run computing {name}"))
        saved = self.store.load_training_file(self.key, f"{name}.pt")
        value = saved["value"] if isinstance(saved, dict) and saved.get("parent") == self._parent() else None
        if value is None:
            self.held[name] = lock  # this run computes it; the others wait for save()
        else:
            lock.close()
        return value

    def save(self, name: str, value) -> None:
        self.store.save_training_file(self.key, f"{name}.pt", {"parent": self._parent(), "value": value})
        if name in self.held:
            self.held.pop(name).close()

    def __enter__(self) -> SharedResults:
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.held):
            self.held.pop(name).close()


class StudyBusy(SlimlabError):
    """Another live process drives the study."""

    def __init__(self, study: str, owner: dict, root: Path):
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', 'this host')}"
        age = f", heartbeat {time.time() - owner['time']:.0f} s ago" if "time" in owner else ""
        super().__init__(f"study {study} is already being run by {who}{age}; follow it with `slimlab status {study} "
                         f"--store {root}`, or run this again once it has ended (what it leaves undone is resumed)")


@contextlib.contextmanager
def _repeating(fn, every: float, name: str):
    """Call `fn` every `every` seconds in a background thread while the block runs (a failed write is skipped)."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every):
            with contextlib.suppress(OSError):
                fn()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _driver_alive(owner: dict) -> bool:
    """A driver's heartbeat is recent and, on this host, its process is alive and not this one."""
    if time.time() - owner.get("time", 0) > STALE_AFTER_SECONDS:
        return False
    if owner.get("host") == socket.gethostname():
        return owner.get("pid") != os.getpid() and _pid_alive(int(owner.get("pid", 0)))
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_stale(root: Path, record: dict) -> bool:
    """A running record whose process is gone: dead pid on this host, or no heartbeat for STALE_AFTER_SECONDS."""
    if record["status"] != "running":
        return False
    try:
        beat = json.loads((Path(root) / "runs" / record["id"] / Store.HEARTBEAT).read_text())
    except (OSError, ValueError):
        beat = {"host": record.get("host"), "pid": record.get("pid", 0), "time": record["updated"]}
    if beat.get("host") == socket.gethostname() and beat.get("pid"):
        return not _pid_alive(int(beat["pid"]))
    return time.time() - beat["time"] > STALE_AFTER_SECONDS


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _migrate_legacy_rows(store: Store, db: sqlite3.Connection) -> None:
    """Write a record.json for each run of an old index that has none, then drop the old table."""
    cur = db.execute("select * from runs")
    cols = [d[0] for d in cur.description]
    for values in cur.fetchall():
        row = dict(zip(cols, values))
        path = store.run_dir(row["id"]) / Store.RECORD
        if not path.exists():
            record = {k: row.get(k) for k in ("id", "status", "name", "error", "host", "created", "updated")}
            record.update({k: json.loads(row[k] or "{}") for k in ("config", "metrics", "notes", "env")})
            record["failure"] = "error" if row["status"] == "failed" else None
            write_atomic(path, _dumps(record))
    db.execute("drop table runs")


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def read_statuses(root: str | Path, run_ids: list[str]) -> dict[str, str]:
    """Status of each run id in a store, read from the folders without creating or changing anything (dry runs)."""
    root = Path(root)
    if not (root / "runs").is_dir():
        return {}
    statuses = {}
    for run_id in run_ids:
        try:
            record = json.loads((root / "runs" / run_id / Store.RECORD).read_text())
            statuses[run_id] = "stale" if is_stale(root, record) else record["status"]
        except (OSError, ValueError, KeyError):
            pass
    return statuses


def load_runs(store: str | Path = DEFAULT_STORE, status: str | None = None) -> list[RunRecord]:
    """All runs in a store (optionally only one status)."""
    return Store(store, readonly=True).runs(status)
