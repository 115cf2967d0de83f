"""A study file -> the list of experiment configs it stands for (base + overrides, grid axes x named variants)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from slimlab.config import ExperimentConfig, apply_overrides, build_config
from slimlab.errors import ConfigError

STUDY_KEYS = {"name", "base", "set", "grid", "variants"}


@dataclass(frozen=True)
class PlannedRun:
    """One experiment of a study: its label (variant and grid point) and its validated config."""

    label: str
    variant: str
    point: dict
    config: ExperimentConfig


def _dotted(mapping: dict) -> list[str]:
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in mapping.items()]


def load_study(path: str | Path, overrides: list[str] = ()) -> list[PlannedRun]:
    """Expand a study YAML; every config is validated here, so a bad study fails before any run starts."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    study = yaml.safe_load(path.read_text()) or {}
    unknown = set(study) - STUDY_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a study has {', '.join(sorted(STUDY_KEYS))}")
    name = study.get("name") or path.stem
    base: dict = {}
    if study.get("base"):
        base_path = (path.parent / study["base"]).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: no such file {base_path}")
        base = yaml.safe_load(base_path.read_text()) or {}
    base = apply_overrides(base, _dotted(study.get("set") or {}))
    grid = study.get("grid") or {}
    if any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{path}: grid: every axis needs a non-empty list of values")
    variants = study.get("variants") or {"default": {}}
    planned = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        for variant, changes in variants.items():
            label = "/".join([variant, *(f"{k}={v}" for k, v in point.items())])
            raw = apply_overrides(base, [*_dotted(point), *_dotted(changes or {}), *overrides])
            raw["name"] = f"{name}:{label}"
            planned.append(PlannedRun(label, variant, point, build_config(raw, f"{path} ({label})")))
    return planned
