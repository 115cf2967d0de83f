"""The `prune` experiment step: prune in rounds, retrain with the one loop, report sparsity, size, speed and accuracy per round."""
from __future__ import annotations

import hashlib
import itertools
import json
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from slimlab.config import TrainConfig
from slimlab.errors import ConfigError, SlimlabError
from slimlab.models import create_model
from slimlab.prune import lottery
from slimlab.prune.config import PruneStepConfig
from slimlab.prune.footprint import footprint
from slimlab.prune.schedules import GradualPruning, PruneFn, amount_to_reach, iterative_targets
from slimlab.prune.selection import select_layers
from slimlab.prune.sparse_io import save_sparse, storage_report
from slimlab.prune.methods import PruneContext
from slimlab.prune.structured import prune_structured_
from slimlab.prune.unstructured import (Masks, MaskKeeper, apply_masks_, current_masks, layer_sparsity, mask_sparsity,
                                        prune_unstructured_)
from slimlab.steps import register_step
from slimlab.train import evaluate, train

if TYPE_CHECKING:
    from slimlab.steps import StepContext

REINIT_SEED_OFFSET = 7919  # the reinit control draws weights from another seed than the run's
RANDOM_SEED_OFFSET = 104729  # random masks, so they differ from the weight initialization's draws


@register_step("prune", PruneStepConfig)
def apply_prune(model: nn.Module, cfg: PruneStepConfig, context: StepContext) -> nn.Module:
    """Prune `model` as `cfg` says, retraining between rounds; metrics, notes and artifacts go into `context`."""
    example = context.example(1, context.data.device)
    measure = context.config.measure
    if not context.time_latency:  # timed under load, a before/after ratio would be noise; the run's own latency is timed alone later
        measure = measure.model_copy(update={"latency": False})
        context.notes["prune_latency_before_after"] = ("not timed: the run executed beside others; compare its latency_b* "
                                                       "(timed alone) with the dense run of the same parent")
    before = footprint(model, example, measure, lambda b: context.example(b, context.data.device))
    if cfg.structured:
        sparsity, layers = _structured_rounds(model, cfg, context, example)
    else:
        sparsity, layers = _unstructured_rounds(model, cfg, context)
    after = footprint(model, example, measure, lambda b: context.example(b, context.data.device))
    _coverage(cfg, context, layers, sparsity, before, after)
    sizes = storage_report(model)
    m = context.metrics
    m["prune_sparsity"] = sparsity
    m["prune_sparsity_all_params"] = 1 - after["nonzero_params"] / before["params"]
    for key in ("params", "nonzero_params", "macs", "nonzero_macs"):
        m[f"prune_{key}_before"], m[f"prune_{key}_after"] = before[key], after[key]
    for key in (k for k in before if k.startswith("latency_")):
        m[f"prune_{key}_before"], m[f"prune_{key}_after"] = before[key], after[key]
        m[f"prune_{key.removesuffix('_median_ms')}_speedup"] = before[key] / after[key]
    disturbed = before.get("timing_disturbed", []) + after.get("timing_disturbed", [])
    if disturbed:  # a before/after ratio timed under load is noise: say so, and flag every figure it touches
        context.notes["prune_latency_noisy"] = "timed while the machine was busy with other work: " + "; ".join(disturbed)
        context.notes["latency_flagged"] = [k for k in m if k.startswith("prune_latency_")]
    m["prune_dense_bytes"], m["prune_sparse_bytes"] = sizes["dense_bytes"], sizes["sparse_bytes"]
    m["prune_sparse_to_dense"] = sizes["sparse_to_dense"]
    context.artifacts["prune_layers.json"] = json.dumps(layers, indent=1, sort_keys=True).encode()
    if not cfg.structured:
        context.artifacts["model_sparse.bin"] = save_sparse(model)
        context.notes["prune_latency"] = ("unstructured sparsity on dense kernels: no speedup expected; the latency_* figures "
                                          "time the same dense convolutions with zeros in them")
    else:
        context.notes["prune_latency"] = "channels physically removed: a smaller dense model, timed as such"
    context.notes["prune_size"] = ("prune_dense_bytes: torch.save(state_dict); prune_sparse_bytes: bitmask + non-zero values "
                                   "(model_sparse.bin, read with slimlab.prune.sparse_io.load_sparse)")
    context.notes["prune_macs"] = "prune_nonzero_macs_*: multiply-accumulates with a non-zero weight, what a sparse kernel could skip"
    return model


def _coverage(cfg: PruneStepConfig, context: StepContext, layers: dict, sparsity: float, before: dict, after: dict) -> None:
    """The coverage line of the run; a prune step that removed nothing fails with one line saying why."""
    if cfg.structured:
        removed = 1 - after["params"] / before["params"]
        groups = layers.get("coverage", {})
        kept = ", ".join(f"{n} {why}" for why, n in groups.get("kept", {}).items())
        line = (f"prune ({cfg.method}, engine {layers.get('engine')}): {groups.get('pruned', 0)} channel groups pruned"
                f"{'; kept whole: ' + kept if kept else ''}; parameters {after['params']:,} of {before['params']:,}")
        full = 1 - (1 - cfg.amount) ** 2  # a layer losing a fraction of its inputs and of its outputs
        if 0 < removed < full / 2:  # the stated tolerance: under half of what pruning every group would remove
            line += (f"; SHORT of amount {cfg.amount:g}: {removed:.0%} of the parameters removed, where pruning every "
                     f"channel group would remove about {full:.0%}")
    else:
        removed = sparsity
        per_layer = layers.get("layers", {})
        pruned = sum(1 for v in per_layer.values() if v.get("sparsity", 0) > 0)
        line = f"prune ({cfg.method}, {cfg.scope}): sparsity {sparsity:.4f} of the selected weights, {pruned} of {len(per_layer)} layers pruned"
    if cfg.amount > 0 and removed <= 0:
        raise SlimlabError(f"prune: {cfg.method} at amount {cfg.amount} removed nothing from {context.config.model.name} ({line})")
    context.notes.setdefault("coverage", []).append(line)


def _unstructured_rounds(model: nn.Module, cfg: PruneStepConfig, context: StepContext) -> tuple[float, dict]:
    select = cfg.layer_filter()
    calls = itertools.count()  # a new seed per prune, so rounds of a random method do not redraw the same scores

    def prune(target_model: nn.Module, amount: float, masks: Masks | None) -> Masks:
        score_context = _score_context(target_model, cfg, context, context.config.seed + RANDOM_SEED_OFFSET + next(calls))
        return prune_unstructured_(target_model, amount, cfg.method, cfg.scope, select, masks, score_context)

    masks = current_masks(model, select)
    start = _rewind_state(model, cfg, context) if cfg.after_round == "weight_rewind" else None
    # Without rewinding, a random-mask control needs values for the weights it keeps that L1 pruning had zeroed: the
    # step's input (the trained parent) supplies them, so the control starts as dense as its mask says.
    dense = _state_copy(model) if cfg.control == "random_mask" and start is None else None
    log = []
    if cfg.schedule == "gradual":
        masks = _gradual(model, cfg, context, prune, masks, start)
        log.append(_record_round(model, context, 1, mask_sparsity(masks)))
    else:
        for r, target in enumerate(iterative_targets(cfg.amount, cfg.rounds), 1):
            last = r == cfg.rounds
            # Rounds before the last do not depend on the control, so a ticket and its controls share them.
            key = None if last else _round_key(cfg, context, r)
            if key is not None and (cached := context.cache_load(key)) is not None:
                next(calls)  # keep the random-mask seeds of later rounds as in an uncached run
                masks = _restore_round(model, cached, context)
                log.append(cached["log"])
                continue
            history_start = len(context.history)
            before_prune = _state_copy(model) if last and dense is not None else None
            masks = prune(model, amount_to_reach(mask_sparsity(masks), target), masks)
            source = start
            if last and cfg.control == "random_mask":
                masks = lottery.random_masks_like(masks, context.config.seed + RANDOM_SEED_OFFSET)
                if before_prune is not None:
                    source = {k: torch.where(v == 0, dense[k], v) if k in masks else v for k, v in before_prune.items()}
            elif last and cfg.control == "reinit":
                source = _fresh_state(model, context)
            if source is not None:
                lottery.rewind_(model, source, masks)
            else:
                apply_masks_(model, masks)
            if cfg.after_round != "none":
                _retrain(model, cfg, context, [MaskKeeper(masks)], r)
            log.append(_record_round(model, context, r, mask_sparsity(masks)))
            if key is not None:
                context.cache_save(key, {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "masks": masks,
                                         "history": context.history[history_start:], "log": log[-1]})
    per_layer = {n.removesuffix(".weight"): {"shape": list(mk.shape), "numel": mk.numel(), "nonzero": int(mk.sum()), "sparsity": s}
                 for (n, mk), s in zip(masks.items(), layer_sparsity(masks).values())}
    return mask_sparsity(masks), {"method": cfg.method, "scope": cfg.scope, "layers": per_layer, "rounds": log}


def _gradual(model: nn.Module, cfg: PruneStepConfig, context: StepContext, prune: PruneFn, masks: Masks, start: dict | None) -> Masks:
    """Zhu & Gupta: prune `rounds` times during one retraining, on the cubic schedule, reaching the target at gradual_end."""
    if start is not None:
        lottery.rewind_(model, start, masks)
    train_cfg = _train_config(cfg, context)
    loader = context.train_loader()
    steps = min(len(loader), train_cfg.max_batches_per_epoch or len(loader)) * train_cfg.epochs
    interval = max(1, int(cfg.gradual_end * steps) // cfg.rounds)
    pruner = GradualPruning(prune, cfg.amount, interval, cfg.rounds, initial=mask_sparsity(masks), masks=masks)
    _retrain(model, cfg, context, [pruner], 1)
    masks = pruner.masks or masks
    if mask_sparsity(masks) < cfg.amount - 1e-6:  # fewer steps than pruning events: finish the schedule now
        masks = prune(model, amount_to_reach(mask_sparsity(masks), cfg.amount), masks)
        context.notes["prune_gradual"] = f"training had {steps} steps for {cfg.rounds} pruning events; the last prune came after training"
    return masks


def _structured_rounds(model: nn.Module, cfg: PruneStepConfig, context: StepContext, example: torch.Tensor) -> tuple[float, dict]:
    select = cfg.layer_filter()
    shapes_before = {n: list(m.weight.shape) for n, m in select_layers(model, select).items()}
    weights_before = sum(m.weight.numel() for m in select_layers(model, select).values())
    channels_total = None
    removed, log, groups = 0.0, [], []
    for r, target in enumerate(iterative_targets(cfg.amount, cfg.rounds), 1):
        groups = prune_structured_(model, amount_to_reach(removed, target), example, cfg.method, cfg.scope, select,
                                   cfg.residual_channels, cfg.round_to, _score_context(model, cfg, context, context.config.seed),
                                   cfg.engine)
        channels_total = channels_total or sum(g.before for g in groups)
        removed = 1 - sum(g.after for g in groups) / channels_total
        if context.config.train.channels_last and example.dim() == 4:
            model.to(memory_format=torch.channels_last)
        if cfg.after_round != "none":
            _retrain(model, cfg, context, [], r)
        weights_after = sum(m.weight.numel() for m in select_layers(model, select).values())
        log.append(_record_round(model, context, r, 1 - weights_after / weights_before, channels_removed=removed))
    layers = {n: {"shape_before": shapes_before[n], "shape_after": list(m.weight.shape)} for n, m in select_layers(model, select).items()}
    report = {"method": cfg.method, "scope": cfg.scope, "layers": layers, "rounds": log,
              "engine": getattr(model, "slimlab_structured_engine", cfg.engine),
              "coverage": getattr(model, "slimlab_structured_coverage", {"pruned": len(groups)}),
              "groups": [{"producers": list(g.producers), "residual": g.residual, "channels_after_last_round": g.after} for g in groups]}
    context.metrics["prune_channels_removed"] = removed
    return log[-1]["sparsity"], report


def _score_context(model: nn.Module, cfg: PruneStepConfig, context: StepContext, seed: int) -> PruneContext:
    """What a method's score may read: training batches (augmented, as training sees them) and the training loss."""
    loss = nn.CrossEntropyLoss(label_smoothing=context.config.train.label_smoothing)
    return PruneContext(model=model, batches=context.train_loader, loss=loss, max_batches=cfg.gradient_batches, seed=seed,
                        norm=cfg.norm)


def _train_config(cfg: PruneStepConfig, context: StepContext) -> TrainConfig:
    train_cfg = lottery.retrain_config(context.config.train, cfg.after_round, cfg.finetune_epochs, cfg.finetune_lr)
    if train_cfg.epochs == 0:
        raise ConfigError(f"after_round {cfg.after_round!r} retrains with train.epochs, which is 0; set train.epochs or use finetune")
    return train_cfg


def _retrain(model: nn.Module, cfg: PruneStepConfig, context: StepContext, callbacks: list, round_index: int) -> None:
    resumable = context.resumable(f"round{round_index}")  # a gradual phase's pruner state is in the checkpoint too
    records = train(model, context.train_loader(), _train_config(cfg, context), callbacks=callbacks,
                    progress=context.progress, desc=f"prune round {round_index}", **resumable)
    context.history.extend({**rec, "prune_round": round_index} for rec in records)
    context.metrics["prune_retrain_seconds"] = context.metrics.get("prune_retrain_seconds", 0.0) + sum(r["seconds"] for r in records)


def _round_key(cfg: PruneStepConfig, context: StepContext, r: int) -> str:
    """Identifies the state after round r: the earlier steps, this step without its control, and r."""
    earlier = context.config.steps[:context.step_index]
    text = json.dumps([earlier, cfg.model_dump(mode="json", exclude={"control"}), r], sort_keys=True)
    return "prune-round-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _restore_round(model: nn.Module, cached: dict, context: StepContext) -> Masks:
    """Load a round computed by an earlier run of the study (same parent, same rounds so far)."""
    model.load_state_dict(cached["model"])
    context.history.extend({**rec, "reused": True} for rec in cached["history"])
    # Its training time counts, as a reused float parent's does: the model cost that much to make, whoever paid.
    retrained = sum(rec.get("seconds", 0.0) for rec in cached["history"])  # epochs have seconds, round records not
    context.metrics["prune_retrain_seconds"] = context.metrics.get("prune_retrain_seconds", 0.0) + retrained
    rec = cached["log"]
    context.metrics[f"round{rec['prune_round']}_top1"] = rec["test_top1"]
    context.metrics[f"round{rec['prune_round']}_sparsity"] = rec["sparsity"]
    context.notes["prune_reuse"] = "rounds before the last were computed once by a run with the same parent and rounds, and reused"
    return {k: v.to(model.state_dict()[k].device) for k, v in cached["masks"].items()}


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _record_round(model: nn.Module, context: StepContext, r: int, sparsity: float, **extra) -> dict:
    """Test top-1 after round r (and validation top-1 when a validation split exists) into metrics and history."""
    amp = context.config.train.amp
    test = evaluate(model, context.test_loader(), amp=False, progress=context.progress, desc=f"test round {r}")  # fp32, as every test figure
    record = {"prune_round": r, "sparsity": sparsity, "test_top1": test["top1"], **extra}
    if len(context.data.val):
        record["val_top1"] = evaluate(model, context.calibration_loader(), amp=amp)["top1"]
    context.metrics[f"round{r}_top1"], context.metrics[f"round{r}_sparsity"] = test["top1"], sparsity
    context.history.append(record)
    return record


def _build(context: StepContext, pretrained: bool) -> Callable[[], nn.Module]:
    cfg = context.config
    c, h, _ = context.data.dataset.image_shape
    return lambda: create_model(cfg.model.name, context.data.dataset.num_classes, c, h,
                                weights=cfg.model.weights if pretrained else None, **cfg.model.options)


def _matching(state: dict, model: nn.Module) -> dict:
    if {k: tuple(v.shape) for k, v in state.items()} != {k: tuple(v.shape) for k, v in model.state_dict().items()}:
        raise SlimlabError("rewinding needs the layers that model.name builds, but an earlier step changed them")
    return state


def _rewind_state(model: nn.Module, cfg: PruneStepConfig, context: StepContext) -> dict:
    """Weights to rewind to: the run's initialization (same seed, same factory) or the weights after epoch rewind_epoch."""
    init = lottery.initial_state(_build(context, pretrained=True), context.config.seed)
    if cfg.rewind_epoch == 0:
        return _matching(init, model)
    saved = getattr(context, "weights_at_epoch", {}).get(cfg.rewind_epoch)  # filled by run.py once it snapshots during training
    if saved is not None:
        return _matching(saved, model)
    replay = _build(context, pretrained=True)()
    replay.load_state_dict(init)
    replay.to(context.data.device)
    if context.config.train.channels_last and context.data.dataset.image_shape[0] > 1:
        replay.to(memory_format=torch.channels_last)
    context.notes["prune_rewind"] = f"weights at epoch {cfg.rewind_epoch} re-derived by replaying the run's first epochs with its seed"
    return _matching(lottery.train_until_epoch(replay, context.train_loader(), context.config.train, cfg.rewind_epoch, context.progress), model)


def _fresh_state(model: nn.Module, context: StepContext) -> dict:
    """The reinit control's weights: the same factory and init scheme, another seed."""
    return _matching(lottery.initial_state(_build(context, pretrained=False), context.config.seed + REINIT_SEED_OFFSET), model)

