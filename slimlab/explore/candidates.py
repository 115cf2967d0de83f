"""Candidates: float and the first engine as the first answer; then the other engines and, from the sensitivity
evidence, int8 with the k most sensitive layers float, channel ratios allotted by sensitivity, prune-then-quantize;
and fine-tuned versions of those that miss."""
from __future__ import annotations

from slimlab.explore.config import ExploreConfig
from slimlab.explore.sensitivity import int8_harm, prune_harm, ranked
from slimlab.explore.trials import Trial, int8_step

FLOAT = "float"


def _channels(ratio: float, layers: list[str]) -> dict:
    return {"kind": "prune", "method": "ln_structured", "scope": "local", "amount": ratio, "after_round": "none",
            "include": layers}


def allotted_channels(cfg: ExploreConfig, rows: list[dict]) -> list[tuple[str, dict]]:
    """Channel pruning where it hurts least: for each ratio of the ladder, the less sensitive half of the layers whose
    pruning alone at that ratio stayed within the budget (the classifier never)."""
    allotted = []
    for ratio in cfg.channel_ladder:
        key = f"channels_{ratio:g}"
        fit = [r for r in rows[:-1] if r.get(key) is not None and r[key] >= -cfg.max_drop]
        order = ranked(fit, lambda r: prune_harm(r, cfg))[::-1]  # least sensitive first
        chosen = sorted(order[:max(1, len(order) // 2)], key=[r["layer"] for r in rows].index) if order else []
        if chosen:
            allotted.append((f"channels {ratio:g} on {len(chosen)} least sensitive", _channels(ratio, chosen)))
    return allotted


def per_layer_channels(cfg: ExploreConfig, rows: list[dict]) -> list[tuple[str, tuple[dict, ...]]]:
    """Ratios allotted layer by layer: each layer (never the classifier) gets the largest ratio of the ladder whose
    pruning alone cost at most half the budget; one prune step per ratio. None when that is one of the uniform ones."""
    allotted: dict[float, list[str]] = {}
    for row in rows[:-1]:
        fits = [r for r in cfg.channel_ladder if (v := row.get(f"channels_{r:g}")) is not None and v >= -cfg.max_drop / 2]
        if fits:
            allotted.setdefault(max(fits), []).append(row["layer"])
    if len(allotted) < 2:
        return []
    steps = tuple(_channels(ratio, layers) for ratio, layers in sorted(allotted.items(), reverse=True))
    label = "channels by layer: " + ", ".join(f"{ratio:g} on {len(layers)}" for ratio, layers in sorted(allotted.items(), reverse=True))
    return [(label, steps)]


def engine_trials(cfg: ExploreConfig) -> list[Trial]:
    """The first answer: float (the reference) and int8 through the first engine, on the whole validation split. Two
    trials, so halving would save nothing; what they find is the bar every other candidate must beat."""
    return [Trial(FLOAT, (), None), Trial(f"int8 {cfg.engines[0]}", (int8_step(cfg.engines[0], []),), None)]


def first_rung(cfg: ExploreConfig, rows: list[dict]) -> list[Trial]:
    """Every candidate the evidence suggests, scored on the validation slice with its objective measured."""
    slice_ = cfg.slice_size
    trials = [Trial(f"int8 {engine}", (int8_step(engine, []),), slice_) for engine in cfg.engines[1:]]
    by_int8 = ranked(rows, int8_harm)
    engine = cfg.engines[0]
    for k in sorted(set(cfg.float_layers)):
        if 0 < k < len(rows):
            trials.append(Trial(f"int8 {engine}, {k} most sensitive float", (int8_step(engine, by_int8[:k]),), slice_))
    pruned = [(label, (step,)) for label, step in allotted_channels(cfg, rows)] + per_layer_channels(cfg, rows)
    for label, steps in pruned:
        trials.append(Trial(label, steps, slice_))
        trials.append(Trial(f"{label}, then int8 {engine}", (*steps, int8_step(engine, [])), slice_))
    return trials


def fine_tuned(cfg: ExploreConfig, trial: Trial) -> Trial | None:
    """The same candidate with fine-tuning: QAT instead of post-training int8, retraining after each pruning step."""
    if not cfg.finetune_epochs or not trial.steps:
        return None
    steps = []
    for step in trial.steps:
        if step["kind"] == "quantize" and step.get("engine", "x86") in ("x86", "fbgemm", "qnnpack", "pt2e"):
            steps.append({**{k: v for k, v in step.items() if k != "method"}, "method": "qat", "qat_epochs": cfg.finetune_epochs})
        elif step["kind"] == "prune":
            steps.append({**step, "after_round": "finetune", "finetune_epochs": cfg.finetune_epochs})
        else:
            return None
    return Trial(f"{trial.label}, fine-tuned {cfg.finetune_epochs} epoch(s)", tuple(steps), None)
