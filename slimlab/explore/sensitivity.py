"""Per-layer sensitivity: one trial per layer and setting (only it int8, only it float, only it pruned), as a table."""
from __future__ import annotations

import math

import torch
from torch import nn

from slimlab.explore.config import ExploreConfig
from slimlab.explore.trials import Trial, done, int8_step
from slimlab.models.calls import first_calls
from slimlab.store import RunRecord

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def weighted_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """The conv and linear layers, the units sensitivity is measured on: in the order `example`'s forward pass first
    calls them, so that the last is the classifier wherever the model defines it (layers it never calls, whose weights
    a parent reads itself, before it); in registration order without an example."""
    names = [name for name, m in model.named_modules() if isinstance(m, _WEIGHTED)]
    if example is None:
        return names
    called = first_calls(model, example, _WEIGHTED)
    return called[:-1] + [n for n in names if n not in called] + called[-1:]


def settings(cfg: ExploreConfig) -> list[str]:
    """The columns of the table: int8 alone, float alone, then the pruning ladders."""
    return (["int8_only", "float_only"] + [f"unstructured_{r:g}" for r in cfg.unstructured_ladder]
            + [f"channels_{r:g}" for r in cfg.channel_ladder])


def _steps(cfg: ExploreConfig, layer: str, setting: str, layers: list[str]) -> tuple[dict, ...]:
    if setting == "int8_only":
        return (int8_step(cfg.engines[0], [n for n in layers if n != layer]),)
    if setting == "float_only":
        return (int8_step(cfg.engines[0], [layer]),)
    method, ratio = setting.rsplit("_", 1)
    name = "l1" if method == "unstructured" else "ln_structured"
    return ({"kind": "prune", "method": name, "scope": "local", "amount": float(ratio), "after_round": "none",
             "include": [layer]},)


def sensitivity_trials(cfg: ExploreConfig, layers: list[str]) -> dict[tuple[str, str], Trial]:
    """(layer, setting) -> its trial, on the first-rung slice of validation, without latency and without fine-tuning.
    The classifier is never channel-pruned: its output channels are the classes."""
    trials = {}
    for layer in layers:
        for setting in settings(cfg):
            if setting.startswith("channels") and layer == layers[-1]:
                continue
            trials[(layer, setting)] = Trial(f"sensitivity/{layer}/{setting}", _steps(cfg, layer, setting, layers),
                                             cfg.slice_size, latency=False)
    return trials


def accuracy_change(record: RunRecord | None) -> float | None:
    """Validation top-1 minus the float model's on the same images, in points; None when the trial did not finish."""
    if not done(record) or "float_top1" not in record.metrics:
        return None
    return round(record.metrics["top1"] - record.metrics["float_top1"], 4)


def sensitivity_table(cfg: ExploreConfig, layers: list[str], records: dict[tuple[str, str], RunRecord | None]) -> list[dict]:
    """One row per layer: the top-1 change of each setting (None where not run or failed) and the int8-alone SQNR."""
    rows = []
    for layer in layers:
        row = {"layer": layer}
        for setting in settings(cfg):
            row[setting] = accuracy_change(records.get((layer, setting)))
        int8 = records.get((layer, "int8_only"))
        row["int8_only_sqnr_db"] = int8.metrics.get("quant_sqnr_db") if done(int8) else None
        rows.append(row)
    return rows


def int8_harm(row: dict) -> float:
    """How much quantizing this layer hurts: the drop with only it int8 and the gain with only it float, whichever
    is larger (either alone is noisy on a slice); then a low SQNR breaks ties between layers that lost nothing."""
    drop = -(row.get("int8_only") or 0.0)
    gain = row.get("float_only") or 0.0
    sqnr = row.get("int8_only_sqnr_db")
    return max(drop, gain) + (0.0 if sqnr is None or math.isinf(sqnr) else -sqnr * 1e-3)


def prune_harm(row: dict, cfg: ExploreConfig) -> float:
    """The drop of removing channels of this layer alone, summed over the ladder (unstructured where it has none)."""
    keys = [f"channels_{r:g}" for r in cfg.channel_ladder] or [f"unstructured_{r:g}" for r in cfg.unstructured_ladder]
    values = [row.get(k) for k in keys]
    return -sum(v for v in values if v is not None) if any(v is not None for v in values) else math.inf


def ranked(rows: list[dict], harm) -> list[str]:
    """Layer names, most sensitive first."""
    return [r["layer"] for r in sorted(rows, key=harm, reverse=True)]


def format_table(cfg: ExploreConfig, rows: list[dict]) -> str:
    """The table for a terminal: top-1 change in points per layer and setting, then the most and least sensitive."""
    columns = settings(cfg)
    width = max(len(r["layer"]) for r in rows)
    lines = [f"{'layer':<{width}}  " + "  ".join(f"{c:>15}" for c in columns)]
    for row in rows:
        classifier = row["layer"] == rows[-1]["layer"]
        cells = [("-" if classifier and c.startswith("channels") else "failed").rjust(15) if row[c] is None
                 else f"{row[c]:+15.2f}" for c in columns]
        lines.append(f"{row['layer']:<{width}}  " + "  ".join(cells))
    by_int8 = ranked(rows, int8_harm)
    pruned = [r for r in rows[:-1] if not math.isinf(prune_harm(r, cfg))]
    by_prune = ranked(pruned, lambda r: prune_harm(r, cfg))
    lines.append(_extremes("int8", by_int8))
    if by_prune:
        lines.append(_extremes("pruning", by_prune))
    return "\n".join(lines)


def _extremes(what: str, order: list[str], shown: int = 3) -> str:
    """'Most sensitive to int8: a, b, c; least: e, d': at most `shown` each, no layer in both lists."""
    most = order[:min(shown, (len(order) + 1) // 2)]
    least = order[len(most):][-shown:][::-1]
    return f"Most sensitive to {what}: {', '.join(most)}" + (f"; least: {', '.join(least)}" if least else "")
