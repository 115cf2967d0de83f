"""A study file -> its runs (grid x zip x seeds x variants, minus exclusions) -> a plan of stages (trainings, runs)."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from slimlab.config import (ExperimentConfig, apply_overrides, build_config, config_hash, read_yaml_mapping,
                            rewind_epochs, step_override_applies, training_hash)
from slimlab.errors import ConfigError

STUDY_KEYS = {"name", "base", "set", "grid", "zip", "exclude", "seeds", "variants", "slurm"}


@dataclass(frozen=True)
class PlannedRun:
    """One experiment of a study: its label (the values that differ between points), variant, point and config."""

    label: str
    variant: str
    point: dict
    config: ExperimentConfig


@dataclass(frozen=True)
class Study:
    """A study file, expanded: its runs in order, the keys that vary between them, and its SLURM settings."""

    name: str
    source: str
    runs: list[PlannedRun]
    axes: list[str]
    slurm: dict


@dataclass(frozen=True)
class Training:
    """A training stage: one parent, trained once, keeping every epoch snapshot any of its runs rewinds to."""

    key: str
    config: ExperimentConfig
    snapshot_epochs: frozenset[int]
    runs: int


@dataclass(frozen=True)
class RunStage:
    """A run stage: one experiment, after its training (None when it trains nothing)."""

    id: str
    planned: PlannedRun
    training: str | None


@dataclass(frozen=True)
class Plan:
    """What a study must execute and in which order: trainings first, then the runs that need them."""

    study: Study
    trainings: list[Training]
    runs: list[RunStage]
    device: str | None  # what train.device `auto` resolves to where the runs execute (None: this machine)

    @property
    def training_epochs(self) -> int:
        return sum(t.config.train.epochs for t in self.trainings)

    def manifest(self) -> dict:
        """The plan as the store keeps it (studies/NAME.json), for `status` and reports."""
        runs = [{"id": r.id, "label": r.planned.label, "variant": r.planned.variant, "point": r.planned.point,
                 "training": r.training} for r in self.runs]
        trainings = [{"key": t.key, "epochs": t.config.train.epochs, "runs": t.runs} for t in self.trainings]
        return {"name": self.study.name, "source": self.study.source, "axes": self.study.axes, "device": self.device,
                "runs": runs, "trainings": trainings}


def _dotted(mapping: dict, prefix: str = "") -> list[str]:
    """Overrides for every leaf: `{train: {epochs: 2}}` sets train.epochs and keeps the rest of the base's train
    section. Lists (steps) and empty mappings are set whole."""
    overrides = []
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            overrides += _dotted(v, f"{prefix}{k}.")
        else:
            overrides.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip()}")
    return overrides


def _mapping(study: dict, key: str, path: Path, example: str) -> dict:
    value = study.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping, e.g. {example}; got a {type(value).__name__}")
    return value


def _axes_of(study: dict, path: Path) -> list[list[dict]]:
    """Each independent axis as its list of partial points: a grid key, a zip group (values that go together), seeds."""
    grid = _mapping(study, "grid", path, "{seed: [0, 1]}")
    if any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: grid: every axis needs a non-empty list of values")
    axes = [[{k: v} for v in values] for k, values in grid.items()]
    groups = study.get("zip") or []
    for i, group in enumerate([groups] if isinstance(groups, dict) else groups):
        if not isinstance(group, dict) or any(not isinstance(v, list) or not v for v in group.values()):
            raise ConfigError(f"{path}: zip: expected a mapping of keys to lists of equal length, e.g. "
                              "{model.name: [resnet18, resnet50], train.batch_size: [128, 64]}")
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{path}: zip: its lists go together, so they need the same length; got {lengths}")
        axes.append([dict(zip(group, values)) for values in zip(*group.values())])
    if "seeds" in study:
        seeds = study["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ConfigError(f"{path}: seeds: expected a list of non-negative integers, e.g. [0, 1, 2]")
        axes.append([{"seed": s} for s in seeds])
    keys = [k for axis in axes for k in axis[0]]
    if len(keys) != len(set(keys)):
        raise ConfigError(f"{path}: a key is an axis twice (in grid, zip or seeds): {sorted(k for k in keys if keys.count(k) > 1)}")
    return axes


def _excluded(study: dict, path: Path, keys: set[str]) -> list[dict]:
    rules = study.get("exclude") or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r for r in rules):
        raise ConfigError(f"{path}: exclude: expected a list of mappings, e.g. [{{steps.0.amount: 0, steps.0.rounds: 5}}]")
    for rule in rules:
        if unknown := set(rule) - keys - {"variant"}:
            raise ConfigError(f"{path}: exclude: {', '.join(sorted(unknown))} is not an axis of this study "
                              f"(axes: {', '.join(sorted(keys | {'variant'}))})")
    return rules


def _label(variant: str, point: dict, varying: list[str], many_variants: bool) -> str:
    parts = [variant] if many_variants else []
    parts += [f"{k}={point[k]}" for k in varying if k in point]
    return "/".join(parts) or variant


def _read(path: Path, overrides: list[str]) -> tuple[dict, dict]:
    """The study mapping, checked, and its base experiment with `set:` and the command line's overrides applied."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    study = read_yaml_mapping(path, "study file")
    if unknown := set(study) - STUDY_KEYS:
        hint = " (this looks like an experiment file: use `slimlab run`)" if unknown & {"data", "model", "train", "steps"} else ""
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a study has {', '.join(sorted(STUDY_KEYS))}{hint}")
    base: dict = {}
    if study.get("base"):
        base_path = (path.parent / study["base"]).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: no such file {base_path}")
        base = read_yaml_mapping(base_path, "base experiment")
    return study, apply_overrides(base, _dotted(_mapping(study, "set", path, "{train.epochs: 5}")))


def _matches(rule: dict, variant: str, point: dict) -> bool:
    return all({**point, "variant": variant}.get(k) == v for k, v in rule.items())


def _planned_runs(path: Path, name: str, base: dict, variants: dict, pairs: list, varying: list[str],
                  overrides: list[str]) -> list[PlannedRun]:
    """Each (variant, point) as a validated config; `--set steps.N.KEY` reaches only the variants that have step N."""
    runs, applied = [], set()
    for variant, point in pairs:
        label = _label(variant, point, varying, len(variants) > 1)
        raw = apply_overrides(base, [*_dotted(point), *_dotted(variants[variant] or {})])
        fitting = [o for o in overrides if step_override_applies(raw, o)]
        applied.update(fitting)
        raw = apply_overrides(raw, fitting)
        raw["name"] = f"{name}:{label}"
        runs.append(PlannedRun(label, variant, point, build_config(raw, f"{path} ({label})")))
    if unused := [o for o in overrides if o not in applied]:
        raise ConfigError(f"--set {unused[0]}: no run of the study has that step")
    return runs


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Expand a study YAML; every config is validated here, so a bad study fails before any run starts."""
    path = Path(path)
    study, base = _read(path, list(overrides))
    name = str(study.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ConfigError(f"{path}: name: {name!r} must be letters, digits and _ . + - (it names a file in the store)")
    variants = _mapping(study, "variants", path, "{float: {}, static: {steps: [...]}}") or {"default": {}}
    for variant, changes in variants.items():
        if changes is not None and not isinstance(changes, dict):
            raise ConfigError(f"{path}: variants: {variant}: expected a mapping of changes, got a {type(changes).__name__}")
    axes = _axes_of(study, path)
    rules = _excluded(study, path, {k for axis in axes for k in axis[0]})
    points = [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]
    for i, rule in enumerate(rules):
        if not any(_matches(rule, variant, point) for variant in variants for point in points):
            raise ConfigError(f"{path}: exclude[{i}] {rule} matches no point of the study; check its values")
    pairs = [(v, p) for p in points for v in variants if not any(_matches(rule, v, p) for rule in rules)]
    varying = [k for k in (points[0] if points else {}) if len({repr(p[k]) for p in points}) > 1]
    runs = _planned_runs(path, name, base, variants, pairs, varying, list(overrides))
    return Study(name, str(path), runs, (["variant"] if len(variants) > 1 else []) + varying, _slurm_settings(study, path))


SLURM_KEYS = {"partition", "time_min", "cpus_per_run", "mem_gb", "gpus_per_run", "max_parallel", "runs_per_task",
              "latency_partition", "extra_args"}


def _slurm_settings(study: dict, path: Path) -> dict:
    settings = _mapping(study, "slurm", path, "{partition: gpu, time_min: 120, gpus_per_run: 1}")
    if unknown := set(settings) - SLURM_KEYS:
        raise ConfigError(f"{path}: slurm: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SLURM_KEYS))}")
    return settings


def plan_stages(study: Study, device: str | None = None) -> Plan:
    """The study as stages: one training per distinct training key (with every snapshot its runs rewind to), then
    the runs, each after its training. Runs with the same id (two points that are one experiment) run once."""
    trainings: dict[str, list] = {}
    runs, seen = [], set()
    for planned in study.runs:
        run_id = config_hash(planned.config, device)
        if run_id in seen:
            continue
        seen.add(run_id)
        key = training_hash(planned.config, device) if planned.config.train.epochs else None
        if key:
            entry = trainings.setdefault(key, [planned.config, set(), 0])
            entry[1] |= rewind_epochs(planned.config)
            entry[2] += 1
        runs.append(RunStage(run_id, planned, key))
    stages = [Training(key, cfg, frozenset(e for e in epochs if 0 < e <= cfg.train.epochs), n)
              for key, (cfg, epochs, n) in trainings.items()]
    return Plan(study, stages, runs, device)
