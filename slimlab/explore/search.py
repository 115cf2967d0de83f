"""The explore pipeline: sensitivity, candidates, successive halving, the pick on validation, the finalists on test."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from slimlab.executors import ExecOptions
from slimlab.explore import candidates, halving, outputs, sensitivity
from slimlab.explore.config import ExploreConfig
from slimlab.explore.finalists import read_test_split, write_deployable
from slimlab.explore.trials import Trial, run_config, run_stage
from slimlab.store import Store


@dataclass
class Explored:
    """What explore found: the sensitivity table, every trial's validation score, the pick (or the closest miss)."""

    layers: list[str]
    table: list[dict]
    scores: dict[str, list[halving.Score]] = field(default_factory=dict)  # rung -> scores
    pick: halving.Score | None = None
    closest: halving.Score | None = None
    float_score: halving.Score | None = None
    test: dict = field(default_factory=dict)  # label -> test figures of the finalists
    deployable: Path | None = None
    snippet: str = ""
    trials: int = 0
    seconds: float = 0.0


def model_layers(cfg: ExploreConfig) -> tuple[list[str], str]:
    """The model's conv and linear layers, and how its inputs are normalized (for the load snippet)."""
    from slimlab.models import create_model
    from slimlab.run import prepare_data

    config = run_config(cfg, Trial("layers", (), cfg.slice_size, latency=False))
    data = prepare_data(config, progress=False, device="cpu")
    c, h, _ = data.dataset.image_shape
    model = create_model(cfg.model, data.dataset.num_classes, c, h, weights=cfg.weights, **cfg.model_options)
    mean, std = data.dataset.mean, data.dataset.std
    return sensitivity.weighted_layers(model), f"pixels/255 minus mean {list(mean)} over std {list(std)}"


def _scores(trials: list[Trial], records: dict, cfg: ExploreConfig) -> list[halving.Score]:
    return [s for t in trials if (s := halving.score(t.label, records.get(t.label), cfg)) is not None]


def run_sensitivity(cfg: ExploreConfig, layers: list[str], store: Store, executor: str, options: ExecOptions) -> list[dict]:
    """Every (layer, setting) trial, then the table."""
    trials = sensitivity.sensitivity_trials(cfg, layers)
    records = run_stage(cfg, "sensitivity", list(trials.values()), store, executor, options)
    return sensitivity.sensitivity_table(cfg, layers, {key: records[t.label] for key, t in trials.items()})


def run_halving(cfg: ExploreConfig, table: list[dict], store: Store, executor: str, options: ExecOptions,
                out_of_time: Callable[[], bool]) -> dict[str, list[halving.Score]]:
    """Rung 0 on the slice, rung 1 on the whole validation split for the promoted (and float, the reference), then
    fine-tuned versions of the fastest that missed the budget, if asked for and time is left."""
    first = candidates.first_rung(cfg, table)
    scores = {"rung0": _scores(first, run_stage(cfg, "rung0", first, store, executor, options), cfg)}
    promoted = set(halving.promote([s for s in scores["rung0"] if s.label != candidates.FLOAT], cfg)) | {candidates.FLOAT}
    second = [Trial(t.label, t.steps, None) for t in first if t.label in promoted]
    scores["rung1"] = _scores(second, run_stage(cfg, "rung1", second, store, executor, options), cfg)
    current = halving.pick([s for s in scores["rung1"] if s.label != candidates.FLOAT], cfg)
    missed = [s for s in scores["rung1"] if s.label != candidates.FLOAT and s.change < -cfg.max_drop
              and (current is None or s.objective < current.objective)]
    tuned = [t for s in sorted(missed, key=lambda s: s.objective)[:2]
             if (t := candidates.fine_tuned(cfg, next(x for x in second if x.label == s.label)))]
    if tuned and not out_of_time():
        scores["finetune"] = _scores(tuned, run_stage(cfg, "finetune", tuned, store, executor, options), cfg)
    return scores


def explore(cfg: ExploreConfig, store: Store, out: Path, executor: str = "local", options: ExecOptions | None = None,
            say: Callable[[str], None] = print) -> Explored:
    """Run (or resume) the whole search and write its outputs to `out`; see docs/explore.md."""
    # Latency timed alone at the end of each stage, from the saved file: no float baselines compiled in every trial.
    started, options = time.monotonic(), replace(options or ExecOptions(progress=False), defer_latency=True)
    out_of_time = lambda: cfg.time_budget is not None and time.monotonic() - started > cfg.time_budget  # noqa: E731
    layers, normalize = model_layers(cfg)
    say(f"explore {cfg.name}: {len(layers)} layers; sensitivity ({len(sensitivity.sensitivity_trials(cfg, layers))} trials)")
    table = run_sensitivity(cfg, layers, store, executor, options)
    outputs.write_sensitivity(out, table)
    say(sensitivity.format_table(cfg, table))
    result = Explored(layers, table)
    if out_of_time():
        say("explore: the time budget was spent in the sensitivity stage; run again with more to go on")
        return result
    result.scores = run_halving(cfg, table, store, executor, options, out_of_time)
    final = [s for rung in ("rung1", "finetune") for s in result.scores.get(rung, [])]
    compressed = [s for s in final if s.label != candidates.FLOAT]
    result.float_score = next((s for s in final if s.label == candidates.FLOAT), None)
    result.pick = halving.pick(compressed, cfg)
    result.closest = None if result.pick else halving.closest(compressed, cfg)
    result.trials = len(sensitivity.sensitivity_trials(cfg, layers)) + sum(len(v) for v in result.scores.values())
    if result.pick:
        for score in (result.pick, result.float_score):
            if score is not None:
                result.test[score.label] = read_test_split(cfg, store, store.get(score.run_id))
        result.deployable, result.snippet = write_deployable(store, store.get(result.pick.run_id), out, normalize)
    result.seconds = time.monotonic() - started
    outputs.write_results(out, cfg, result)
    return result
