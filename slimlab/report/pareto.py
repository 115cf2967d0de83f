"""The non-dominated set: points no other point beats on one objective without losing on another."""
from __future__ import annotations

import math
from typing import Sequence


def _usable(point: Sequence[float | None]) -> bool:
    return all(v is not None and not math.isnan(v) for v in point)


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    better = [(x > y) if up else (x < y) for x, y, up in zip(a, b, maximize)]
    worse = [(x < y) if up else (x > y) for x, y, up in zip(a, b, maximize)]
    return any(better) and not any(worse)


def non_dominated(points: Sequence[Sequence[float | None]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points on the Pareto front. Equal points are all on it (neither beats the other); a point with
    a missing objective (None or NaN) is on no front and dominates nothing."""
    usable = [i for i, p in enumerate(points) if _usable(p)]
    return [i for i in usable if not any(dominates(points[j], points[i], maximize) for j in usable if j != i)]
