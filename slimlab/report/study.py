"""What is in the store for a study: every run it lists, found in the store or not, with its label, variant and
point; the studies a store holds; runs by id prefix; a run's config as the dotted keys `--set` takes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from slimlab.errors import ConfigError
from slimlab.store import RunRecord, Store

ALL_RUNS = "all runs"  # the name of the pseudo-study made of every run in a store


@dataclass(frozen=True)
class StudyRun:
    """One run a study lists: its record when the store has one (`status` is then the record's), else pending."""

    id: str
    label: str
    variant: str
    point: dict
    record: RunRecord | None = None

    @property
    def status(self) -> str:
        return self.record.status if self.record else "pending"

    @property
    def failure(self) -> str | None:
        """The failure class of a failed run (error, diverged, oom, ...), `error` for stores that do not record one."""
        if self.status != "failed":
            return None
        return getattr(self.record, "failure", None) or "error"

    @property
    def metrics(self) -> dict:
        return self.record.metrics if self.record and self.status == "done" else {}

    @property
    def group(self) -> str:
        """The label of its replicates: the variant and every point value but the seed."""
        return "/".join([self.variant, *(f"{k}={v}" for k, v in self.point.items() if k != "seed")])


@dataclass(frozen=True)
class Study:
    """The runs of one study in one store, in the study's order."""

    name: str
    store: Store
    axes: list[str]
    runs: list[StudyRun] = field(default_factory=list)

    def done(self) -> list[StudyRun]:
        return [r for r in self.runs if r.status == "done"]

    def groups(self) -> dict[str, list[StudyRun]]:
        """Replicates (runs differing only in seed) by group label, in the study's order."""
        groups: dict[str, list[StudyRun]] = {}
        for run in self.runs:
            groups.setdefault(run.group, []).append(run)
        return groups

    def history(self, run: StudyRun) -> list[dict]:
        path = self.store.run_dir(run.id) / Store.HISTORY
        return json.loads(path.read_text()) if path.is_file() else []

    def artifact(self, run: StudyRun, name: str):
        """A JSON file a step saved beside the run (prune_layers.json, quant_layers.json), or None."""
        path = self.store.run_dir(run.id) / name
        return json.loads(path.read_text()) if path.is_file() else None


def open_store(root: str | Path) -> Store:
    """A store that must already exist: reading never creates one under a mistyped path."""
    root = Path(root)
    if not root.is_dir() or not ((root / "index.sqlite").is_file() or (root / "runs").is_dir()):
        raise ConfigError(f"no slimlab store at {root} (no index.sqlite or runs/ there)")
    return Store(root, readonly=True)  # the report reads; it never writes to the store (issue 26)


def parse_label(label: str) -> tuple[str, dict]:
    """`static/data.name=cifar10/seed=1` -> ("static", {"data.name": "cifar10", "seed": 1}): a study's run label."""
    variant, *parts = label.split("/")
    point = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if sep:
            point[key] = yaml.safe_load(value)
    return variant, point


def _varying(runs: list[StudyRun]) -> list[str]:
    keys = list(dict.fromkeys(k for r in runs for k in r.point))
    return [k for k in keys if len({json.dumps(r.point.get(k), sort_keys=True) for r in runs}) > 1]


def _from_manifest(store: Store, manifest: dict, records: dict[str, RunRecord]) -> Study:
    runs = [StudyRun(r["id"], r["label"], r["variant"], dict(r.get("point") or {}), records.get(r["id"]))
            for r in manifest["runs"]]
    return Study(manifest["name"], store, list(manifest.get("axes") or _varying(runs)), runs)


def _from_names(store: Store, name: str, records: list[RunRecord]) -> Study:
    runs = []
    for record in records:
        study, sep, label = record.name.partition(":")
        if name == ALL_RUNS or (sep and study == name):
            variant, point = parse_label(label if sep else (record.name or record.id[:8]))
            variant = f"{study}:{variant}" if name == ALL_RUNS and sep else variant
            runs.append(StudyRun(record.id, record.name or record.id[:8], variant, point, record))
    return Study(name, store, _varying(runs), runs)


def _manifests(store: Store) -> dict[str, dict]:
    folder = store.root / "studies"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return {m["name"]: m for m in (json.loads(p.read_text()) for p in paths)}


def load_study(store_root: str | Path, name: str | None = None) -> Study:
    """A study by name (its manifest, else the runs named `NAME:...`); without a name, the store's only study or
    every run in the store."""
    store = open_store(store_root)
    records = store.runs()
    manifests = _manifests(store)
    if name is None:
        names = study_names(store, records, manifests)
        name = names[0] if len(names) == 1 else ALL_RUNS
    study = _build(store, name, records, manifests)
    if not study.runs:
        known = ", ".join(study_names(store, records, manifests)) or "none"
        raise ConfigError(f"no study '{name}' in {store.root} (studies there: {known})")
    return study


def _build(store: Store, name: str, records: list[RunRecord], manifests: dict[str, dict]) -> Study:
    if name in manifests:
        return _from_manifest(store, manifests[name], {r.id: r for r in records})
    return _from_names(store, name, records)


def study_names(store: Store, records: list[RunRecord], manifests: dict[str, dict]) -> list[str]:
    from_names = [r.name.split(":", 1)[0] for r in records if ":" in r.name]
    return list(dict.fromkeys([*manifests, *from_names]))


def find_runs(store: Store, prefixes: Sequence[str]) -> list[RunRecord]:
    """The run each id prefix names, in the order given; a prefix matching no run or several is refused."""
    if not prefixes:
        raise ConfigError("give at least one run id (an id prefix is enough)")
    found = []
    for prefix in prefixes:
        matches = store.find(prefix)
        if not matches:
            raise ConfigError(f"no run with id starting '{prefix}' in {store.root}")
        if len(matches) > 1:
            raise ConfigError(f"'{prefix}' matches {len(matches)} runs in {store.root}; give more characters")
        found.append(matches[0])
    return found


def runs_study(store_root: str | Path, run_ids: Sequence[str]) -> Study:
    """Some runs of a store, by id or id prefix, as a study of their own (the report of one run, say)."""
    store = open_store(store_root)
    records = list({r.id: r for r in find_runs(store, run_ids)}.values())
    study = _from_names(store, ALL_RUNS, records)
    first = records[0]
    name = f"{first.name or 'run'} ({first.id[:8]})" if len(records) == 1 else f"{len(records)} runs"
    return Study(name, store, study.axes, study.runs)


def list_studies(store_root: str | Path) -> list[dict]:
    """Every study in a store with its run counts: name, runs, done, failed, pending (not run, running or stale)."""
    store = open_store(store_root)
    records = store.runs()
    manifests = _manifests(store)
    rows = []
    for name in study_names(store, records, manifests):
        runs = _build(store, name, records, manifests).runs
        done, failed = sum(r.status == "done" for r in runs), sum(r.status == "failed" for r in runs)
        rows.append({"name": name, "runs": len(runs), "done": done, "failed": failed, "pending": len(runs) - done - failed})
    return rows


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """`{"train": {"lr": 0.1}, "steps": [{"kind": "prune"}]}` -> `{"train.lr": 0.1, "steps.0.kind": "prune"}`: the
    dotted keys `--set` takes. A list of plain values stays one value."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{dotted}.{i}."))
        else:
            flat[dotted] = value
    return flat
