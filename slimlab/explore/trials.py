"""Trials as ordinary run configs on the held-out validation split, run as a study by the executors that exist."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimlab.config import ExperimentConfig, build_config, config_hash
from slimlab.data import list_datasets
from slimlab.errors import ConfigError
from slimlab.executors import ExecOptions, execute
from slimlab.explore.config import ExploreConfig
from slimlab.plan import PlannedRun, Study, plan_stages
from slimlab.store import RunRecord, Store


@dataclass(frozen=True)
class Trial:
    """One configuration to score: a label for people, its compression steps, and where it is scored."""

    label: str
    steps: tuple[dict, ...]
    val_images: int | None  # None: the whole validation split
    latency: bool = True


ERROR_BATCHES = 1  # the logit error (SQNR) of a trial on one evaluation batch: a ranking of layers, not a figure to quote


def int8_step(engine: str, skip: list[str]) -> dict:
    """Post-training int8 through `engine` (ONNX Runtime is a method of its own), `skip` left float."""
    method = {"kind": "quantize", "method": "onnxruntime"} if engine == "onnxruntime" else {
        "kind": "quantize", "method": "static", "engine": engine}
    return {**method, "error_batches": ERROR_BATCHES, **({"skip": skip} if skip else {})}


def user_data(cfg: ExploreConfig) -> dict:
    """The user's dataset as a run's data section: a registered name, or an image folder (its path resolved)."""
    if cfg.data in list_datasets():
        return {"name": cfg.data, "options": dict(cfg.data_options)}
    if not Path(cfg.data).expanduser().exists():
        raise ConfigError(f"data: {cfg.data!r} is neither a registered dataset ({', '.join(list_datasets())}) nor a folder")
    return {"name": "imagefolder", "path": str(Path(cfg.data).expanduser().resolve()), "options": dict(cfg.data_options)}


def data_section(cfg: ExploreConfig, test_subset: int | None = None) -> dict:
    """The run's data: the validation split of the user's dataset served as its test split (slimlab/data/heldout.py);
    the int8 candidates calibrate on `calibration_size` further training images."""
    inner = user_data(cfg)
    whole = test_subset is None or (cfg.val_size is not None and test_subset >= cfg.val_size)  # then one run id for both
    section = {"name": "heldout", "val_size": cfg.calibration_size, "test_subset": None if whole else test_subset,
               "options": {"of": inner["name"], "val_size": cfg.val_size, "options": inner["options"]}}
    return {**section, "path": inner["path"]} if "path" in inner else section


DEFAULT_VAL, DEFAULT_CALIBRATION, SHARE = 5000, 1000, 5  # at most a fifth of the training images each, by default


def sized(cfg: ExploreConfig) -> ExploreConfig:
    """The question with its split sizes set: as given, else 5,000 validation and 1,000 calibration images or a fifth
    of the training images each, whichever is fewer; the slice never larger than the validation split. Sizes the
    training split cannot hold are refused in one line that names the key, before any trial."""
    from slimlab.run import prepare_data

    config = build_config({"data": {**user_data(cfg), "val_size": 0}, "model": {"name": cfg.model}, "train": {"epochs": 0}},
                          "slimlab explore")
    total = len(prepare_data(config, progress=False, device="cpu").train)
    val = cfg.val_size or min(DEFAULT_VAL, total // SHARE)
    calibration = cfg.calibration_size or min(DEFAULT_CALIBRATION, (total - val) // SHARE)
    if val < 1 or calibration < 1 or val + calibration >= total:
        raise ConfigError(f"val_size ({val}) and calibration_size ({calibration}): {cfg.data} has {total} training images, "
                          f"and both splits must leave some; set smaller ones (--val-size, or the keys in the explore YAML)")
    return cfg.model_copy(update={"val_size": val, "calibration_size": calibration, "slice_size": min(cfg.slice_size, val)})


def run_config(cfg: ExploreConfig, trial: Trial) -> ExperimentConfig:
    """The experiment a trial is: the user's trained model, no training, the trial's steps, measured on validation."""
    raw = {"name": f"explore-{cfg.name}:{trial.label}", "seed": cfg.seed, "data": data_section(cfg, trial.val_images),
           "model": {"name": cfg.model, "weights": cfg.weights, "options": cfg.model_options},
           "train": {"epochs": 0, "device": cfg.device},
           "measure": {"batch_sizes": [cfg.batch], "latency": trial.latency, "energy": cfg.minimize.startswith("energy")},
           "steps": [dict(s) for s in trial.steps]}
    return build_config(raw, f"explore trial {trial.label}")


def trial_study(cfg: ExploreConfig, stage: str, trials: list[Trial]) -> Study:
    """A stage's trials as a study the plan and the executors take as they take a study file's."""
    name = f"explore-{cfg.name}-{stage}"
    runs = [PlannedRun(t.label, "default", {"trial": t.label}, run_config(cfg, t)) for t in trials]
    return Study(name, f"slimlab explore ({stage})", runs, ["trial"], {})


def run_stage(cfg: ExploreConfig, stage: str, trials: list[Trial], store: Store, executor: str,
              options: ExecOptions) -> dict[str, RunRecord | None]:
    """Execute the trials not yet done (a killed explore resumes here) and return each label's record."""
    study = trial_study(cfg, stage, trials)
    plan = plan_stages(study)
    if plan.runs:
        execute(plan, store, executor, options)
    return {planned.label: store.get(config_hash(planned.config)) for planned in study.runs}


def done(record: RunRecord | None) -> bool:
    return record is not None and record.status == "done"
