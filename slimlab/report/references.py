"""Reference points from a CSV the user gives (published results, say), drawn on the figures whose axes they have.

Columns: `label`, `top1` (%), and any of `size_mb`, `latency_b<N>_ms`, `energy_j`, `sparsity_pct`."""
from __future__ import annotations

import csv
from pathlib import Path

from slimlab.errors import ConfigError
from slimlab.report.spec import Series

COLUMNS = {"size": "size_mb", "energy": "energy_j", "sparsity": "sparsity_pct"}


def read_references(path: str | Path) -> list[dict]:
    """Rows of the CSV, numbers as floats and empty cells left out; a file without `label` and `top1` is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such reference file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "top1"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{path}: a reference CSV needs the columns label and top1 (missing: {', '.join(sorted(missing))})")
        return [_row(path, n, row) for n, row in enumerate(reader, start=2)]


def _row(path: Path, line: int, row: dict) -> dict:
    parsed = {"label": row["label"]}
    for key, value in row.items():
        if key != "label" and value not in ("", None):
            try:
                parsed[key] = float(value)
            except ValueError:
                raise ConfigError(f"{path}:{line}: {key}: expected a number, got {value!r}") from None
    return parsed


def reference_series(references: list[dict], x_key: str) -> list[Series]:
    """The references that have this figure's x axis (a metric key: size, latency_b1, ...) and top-1."""
    column = COLUMNS.get(x_key, f"{x_key}_ms")
    rows = [r for r in references if column in r and "top1" in r]
    if not rows:
        return []
    labels = [r["label"] for r in rows]
    return [Series("reference (your CSV)", [r[column] for r in rows], [r["top1"] for r in rows], symbol="star",
                   color="#1f77b4", labels=labels, hover=labels)]
