"""The explore pipeline: a first answer from the engines, then sensitivity, candidates from it, successive halving,
the pick on validation, the finalists on test. Each stage may be the last: the time budget and a front that stopped
improving end the search with the best answer so far."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from slimlab.errors import SlimlabError
from slimlab.executors import ExecOptions
from slimlab.explore import candidates, halving, outputs, sensitivity
from slimlab.explore.config import ExploreConfig
from slimlab.explore.finalists import read_test_split, write_deployable
from slimlab.explore.trials import Trial, run_config, run_stage, sized
from slimlab.store import Store

FINAL_RUNGS = ("engines", "rung1", "finetune")  # scored on the whole validation split: where the pick comes from


@dataclass
class Explored:
    """What explore found: the sensitivity table, every trial's validation score, the pick (or the closest miss)."""

    layers: list[str]
    table: list[dict] = field(default_factory=list)
    scores: dict[str, list[halving.Score]] = field(default_factory=dict)  # stage -> scores
    finished: dict[str, float] = field(default_factory=dict)  # stage -> seconds since this invocation started
    stopped: str = ""  # why the search ended before its last stage, if it did
    pick: halving.Score | None = None
    closest: halving.Score | None = None
    float_score: halving.Score | None = None
    test: dict = field(default_factory=dict)  # label -> test figures of the finalists
    figures: dict = field(default_factory=dict)  # label -> latency and size of the pick, float and the best single method
    deployable: Path | None = None
    snippet: str = ""
    trials: int = 0
    seconds: float = 0.0

    def final(self) -> list[halving.Score]:
        """The compressed candidates scored on the whole validation split."""
        return [s for rung in FINAL_RUNGS for s in self.scores.get(rung, []) if s.label != candidates.FLOAT]

    def finalists(self) -> list[halving.Score]:
        """The pick and float, once each (the pick may be float): what the test split is read for. None without a pick."""
        return list({s.label: s for s in (self.pick, self.float_score) if s is not None}.values()) if self.pick else []


def model_layers(cfg: ExploreConfig) -> tuple[list[str], str, int]:
    """The model's conv and linear layers, how its inputs are normalized (for the load snippet), and its classes."""
    from slimlab.models import create_model
    from slimlab.run import prepare_data

    config = run_config(cfg, Trial("layers", (), cfg.slice_size, latency=False))
    data = prepare_data(config, progress=False, device="cpu")
    c, h, _ = data.dataset.image_shape
    model = create_model(cfg.model, data.dataset.num_classes, c, h, weights=cfg.weights, **cfg.model_options)
    mean, std = data.dataset.mean, data.dataset.std
    example = next(iter(data.loader(data.test, 2, config)))[0] if len(data.test.labels) else None
    return (sensitivity.weighted_layers(model, example), f"pixels/255 minus mean {list(mean)} over std {list(std)}",
            data.dataset.num_classes)


def at_chance(cfg: ExploreConfig, store: Store, float_score: halving.Score | None, classes: int) -> str:
    """Why the float model looks untrained (validation top-1 within three standard errors of guessing), or ''."""
    record = store.get(float_score.run_id) if float_score else None
    top1 = record.metrics.get("top1") if record else None
    if top1 is None or classes < 2:
        return ""
    chance = 100 / classes
    if top1 > chance + 3 * 100 * math.sqrt(chance / 100 * (1 - chance / 100) / float_score.images):
        return ""
    weights = f"are {cfg.weights} its trained weights?" if cfg.weights else "no --weights were given"
    return (f"explore {cfg.name}: the float model scores {top1:.1f}% on {float_score.images} validation images, chance for "
            f"{classes} classes ({weights}); pass the trained model's state dict with --weights")


class Stages:
    """Runs the stages of one explore through the executors, keeping the scores, the clock and the trial count."""

    def __init__(self, cfg: ExploreConfig, store: Store, executor: str, options: ExecOptions, result: Explored):
        self.cfg, self.store, self.executor, self.options, self.result = cfg, store, executor, options, result
        self.started = time.monotonic()

    def out_of_time(self) -> bool:
        return self.cfg.time_budget is not None and time.monotonic() - self.started > self.cfg.time_budget

    def run(self, stage: str, trials: list[Trial]) -> dict:
        records = run_stage(self.cfg, stage, trials, self.store, self.executor, self.options)
        self.result.trials += len(trials)
        self.result.finished[stage] = round(time.monotonic() - self.started, 1)
        return records

    def scored(self, stage: str, trials: list[Trial]) -> list[halving.Score]:
        records = self.run(stage, trials)
        self.result.scores[stage] = [s for t in trials if (s := halving.score(t.label, records.get(t.label), self.cfg))]
        return self.result.scores[stage]


def run_sensitivity(stages: Stages, layers: list[str]) -> list[dict] | None:
    """Every (layer, setting) trial, one setting per stage so that a spent time budget stops between them; then the
    table (None if the budget ended it first)."""
    cfg, trials, records = stages.cfg, sensitivity.sensitivity_trials(stages.cfg, layers), {}
    for setting in sensitivity.settings(cfg):
        chosen = {key: t for key, t in trials.items() if key[1] == setting}
        ran = stages.run(f"sensitivity-{setting}", list(chosen.values()))
        records.update({key: ran[t.label] for key, t in chosen.items()})
        if stages.out_of_time() and setting != sensitivity.settings(cfg)[-1]:
            return None
    return sensitivity.sensitivity_table(cfg, layers, records)


def run_halving(stages: Stages, table: list[dict], best: halving.Score | None) -> str:
    """Rung 0 on the slice; rung 1 on the whole validation split for what might beat `best` (the fastest within the
    budget so far) by `min_gain`; then fine-tuned versions of the fastest that missed the budget, if asked for.
    Returns why it stopped early, or ''."""
    cfg = stages.cfg
    first = candidates.first_rung(cfg, table)
    rung0 = stages.scored("rung0", first)
    bar = best.objective * (1 - cfg.min_gain) if best else None
    promoted = set(halving.promote([s for s in rung0 if bar is None or s.objective <= bar], cfg))
    if not promoted:
        return (f"the front stopped improving: no candidate from the sensitivity evidence came within the budget and "
                f"{cfg.min_gain:.0%} below {best.label}'s {cfg.minimize} on the slice") if best else "no candidate kept the budget on the slice"
    second = [Trial(t.label, t.steps, None) for t in first if t.label in promoted]
    stages.scored("rung1", second)
    current = halving.answer(stages.result.final(), stages.result.float_score, cfg)
    missed = [s for s in stages.result.scores["rung1"] if s.change < -cfg.max_drop and (current is None or s.objective < current.objective)]
    tuned = [t for s in sorted(missed, key=lambda s: s.objective)[:2]
             if (t := candidates.fine_tuned(cfg, next(x for x in second if x.label == s.label)))]
    if tuned and stages.out_of_time():
        return "the time budget was spent before fine-tuning"
    if tuned:
        stages.scored("finetune", tuned)
    return ""


def search(stages: Stages, layers: list[str], say: Callable[[str], None], classes: int = 0) -> None:
    """The first engine first (a whole answer in one stage), then, time allowing, the evidence and the candidates it
    suggests. An untrained float model stops it there, in one line."""
    cfg, result = stages.cfg, stages.result
    engines = stages.scored("engines", candidates.engine_trials(cfg))
    result.float_score = next((s for s in engines if s.label == candidates.FLOAT), None)
    if why := at_chance(cfg, stages.store, result.float_score, classes):
        raise SlimlabError(why)
    best = halving.answer(result.final(), result.float_score, cfg)
    first = ("no trial finished (slimlab runs --status failed)" if not result.final() else
             "the float model as it is (no int8 keeps the budget yet)" if result.float_score else "nothing keeps the budget")
    say(f"explore {cfg.name}: first answer after {result.finished['engines']:.0f} s: "
        + (f"{best.label} ({best.change:+.2f} points)" if best else first))
    if stages.out_of_time():
        result.stopped = "the time budget was spent after the engines stage"
        return
    say(f"explore {cfg.name}: {len(layers)} layers; sensitivity ({len(sensitivity.sensitivity_trials(cfg, layers))} trials)")
    table = run_sensitivity(stages, layers)
    if table is None:
        result.stopped = "the time budget was spent in the sensitivity stage"
        return
    result.table = table
    say(sensitivity.format_table(cfg, table))
    if stages.out_of_time():
        result.stopped = "the time budget was spent after the sensitivity stage"
        return
    result.stopped = run_halving(stages, table, best)


def explore(cfg: ExploreConfig, store: Store, out: Path, executor: str = "local", options: ExecOptions | None = None,
            say: Callable[[str], None] = print) -> Explored:
    """Run (or resume) the whole search and write its outputs to `out`; see docs/explore.md."""
    # Latency timed alone at the end of each stage, from the saved file: no float baselines compiled in every trial.
    options = replace(options or ExecOptions(progress=False), defer_latency=True)
    cfg = sized(cfg)
    layers, normalize, classes = model_layers(cfg)
    result = Explored(layers)
    stages = Stages(cfg, store, executor, options, result)
    search(stages, layers, say, classes)
    if result.table:
        outputs.write_sensitivity(out, result.table)
    if result.stopped:
        say(f"explore {cfg.name}: {result.stopped}")
    result.pick = halving.answer(result.final(), result.float_score, cfg)
    result.closest = None if result.pick else halving.closest(result.final(), cfg)
    if result.pick:
        for score in result.finalists():
            result.test[score.label] = read_test_split(cfg, store, store.get(score.run_id))
        result.deployable, result.snippet = write_deployable(store, store.get(result.pick.run_id), out, normalize)
        result.figures = outputs.compared_figures(cfg, result, store)
    result.seconds = time.monotonic() - stages.started
    outputs.write_results(out, cfg, result, store)
    return result
