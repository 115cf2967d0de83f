"""Successive halving on validation: a cheap score on a slice, then the whole split only for what might win."""
from __future__ import annotations

import math
from dataclasses import dataclass

from slimlab.explore.config import ExploreConfig
from slimlab.store import RunRecord


@dataclass(frozen=True)
class Score:
    """A trial's validation figures: the top-1 change against float on the same images, the objective, how many images."""

    label: str
    change: float
    objective: float
    images: int
    run_id: str
    single: bool = False  # one compression method as it comes (one step, nothing left float): what a fixed grid tries


OBJECTIVE_METRICS = {"size": "model_size_bytes", "payload": "weight_payload_bytes", "macs": "macs"}  # else per batch


def objective_key(cfg: ExploreConfig) -> str:
    """The run metric the objective is: latency or energy at the batch asked, the file's or the weights' bytes, or MACs."""
    if cfg.minimize.startswith("energy"):
        return f"energy_b{cfg.batch}_mj"
    return OBJECTIVE_METRICS.get(cfg.minimize, f"latency_b{cfg.batch}_median_ms")


def objective_unit(cfg: ExploreConfig) -> str:
    if cfg.minimize.startswith("energy"):
        return "mJ"
    return "MACs" if cfg.minimize == "macs" else "bytes" if cfg.minimize in OBJECTIVE_METRICS else "ms"


def objective_value(record: RunRecord, cfg: ExploreConfig) -> float | None:
    """The figure to minimize, from the run's metrics."""
    return record.metrics.get(objective_key(cfg))


def score(label: str, record: RunRecord | None, cfg: ExploreConfig, objective: float | None = None) -> Score | None:
    """None for a trial that failed, or has no accuracy or objective recorded (latency still pending)."""
    if record is None or record.status != "done" or "float_top1" not in record.metrics and record.config.get("steps"):
        return None
    metrics = record.metrics
    value = objective if objective is not None else objective_value(record, cfg)
    if value is None:
        return None
    change = metrics["top1"] - metrics.get("float_top1", metrics["top1"])
    images = record.config["data"].get("test_subset") or cfg.val_size
    steps = record.config.get("steps") or []
    return Score(label, change, value, images, record.id, len(steps) == 1 and not steps[0].get("skip"))


def slack(change: float, images: int) -> float:
    """Two standard errors of a paired top-1 change on `images` images, in points: the predictions that changed are
    at least |change| and, for a change near zero, about one in a hundred (binomial; an allowance, not a bound)."""
    flipped = abs(change) / 100 + 0.01
    return 2 * 100 * math.sqrt(flipped / images)


def promote(scores: list[Score], cfg: ExploreConfig) -> list[str]:
    """The labels worth the whole validation split: within the budget on the slice (with a slack for its noise),
    then the best 1/eta of those by the objective (at least one)."""
    hopeful = [s for s in scores if s.change + slack(s.change, s.images) >= -cfg.max_drop]
    hopeful.sort(key=lambda s: (s.objective, -s.change))
    return [s.label for s in hopeful[:max(1, math.ceil(len(hopeful) / cfg.eta))]] if hopeful else []


def pick(scores: list[Score], cfg: ExploreConfig) -> Score | None:
    """The lowest objective among the scores within the budget on the whole validation split; ties to accuracy."""
    passing = [s for s in scores if s.change >= -cfg.max_drop]
    return min(passing, key=lambda s: (s.objective, -s.change)) if passing else None


def answer(scores: list[Score], reference: Score | None, cfg: ExploreConfig) -> Score | None:
    """The pick, unless it is no better than the float model `reference` on the objective (int8 can be slower than
    float, and quantization leaves MACs as they were): then float itself is the answer. None when no compressed
    candidate keeps the budget."""
    best = pick(scores, cfg)
    return reference if best is not None and reference is not None and best.objective >= reference.objective else best


def closest(scores: list[Score], cfg: ExploreConfig) -> Score | None:
    """When nothing passes: the compressed candidate that came nearest to the budget."""
    return max(scores, key=lambda s: s.change) if scores else None
