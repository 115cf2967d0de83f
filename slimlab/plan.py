"""A study file -> the list of experiment configs it stands for (base + overrides, grid axes x named variants)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from slimlab.config import ExperimentConfig, apply_overrides, build_config, read_yaml_mapping
from slimlab.errors import ConfigError

STUDY_KEYS = {"name", "base", "set", "grid", "variants"}


@dataclass(frozen=True)
class PlannedRun:
    """One experiment of a study: its label (variant and grid point) and its validated config."""

    label: str
    variant: str
    point: dict
    config: ExperimentConfig


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


def load_study(path: str | Path, overrides: list[str] = ()) -> list[PlannedRun]:
    """Expand a study YAML; every config is validated here, so a bad study fails before any run starts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    study = read_yaml_mapping(path, "study file")
    unknown = set(study) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a study has {', '.join(sorted(STUDY_KEYS))}")
    name = study.get("name") or path.stem
    base: dict = {}
    if study.get("base"):
        base_path = (path.parent / study["base"]).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: no such file {base_path}")
        base = read_yaml_mapping(base_path, "base experiment")
    base = apply_overrides(base, _dotted(_mapping(study, "set", path, "{train.epochs: 5}")))
    grid = _mapping(study, "grid", path, "{seed: [0, 1]}")
    if any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: grid: every axis needs a non-empty list of values")
    variants = _mapping(study, "variants", path, "{float: {}, static: {steps: [...]}}") or {"default": {}}
    for variant, changes in variants.items():
        if changes is not None and not isinstance(changes, dict):
            raise ConfigError(f"{path}: variants: {variant}: expected a mapping of changes, got a {type(changes).__name__}")
    planned = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        for variant, changes in variants.items():
            label = "/".join([variant, *(f"{k}={v}" for k, v in point.items())])
            raw = apply_overrides(base, [*_dotted(point), *_dotted(changes or {}), *overrides])
            raw["name"] = f"{name}:{label}"
            planned.append(PlannedRun(label, variant, point, build_config(raw, f"{path} ({label})")))
    return planned
