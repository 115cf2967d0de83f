"""The only place that sequences one experiment: data -> model -> train -> compression steps -> measure -> store."""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import platform
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from slimlab import measure
from slimlab.config import ExperimentConfig, config_hash, rewind_epochs, training_hash
from slimlab.data import DatasetRequest, load_dataset
from slimlab.data.loader import balanced_subset, split_validation
from slimlab.deployable import (DEFERRABLE_FORMATS, MODEL_FILES, RAW_FILES, describe_input, load_deployable, load_raw_file, raw_top1,
                                inherit_flags, speedups, time_latency, with_preprocessing)
from slimlab.errors import ConfigError, RunFailed, SlimlabError
from slimlab.models import create_model
from slimlab.data.prepared import Prepared
from slimlab.steps import StepContext, step_kinds
from slimlab.store import DEFAULT_STORE, RunRecord, SharedResults, Store
from slimlab.train import TrainingDiverged, TrainState, evaluate, train

TRAINED_WEIGHTS = "trained.pt"  # float weights and history after training, before any compression step
STEP_TRAIN_SECONDS = ("quant_qat_seconds", "prune_retrain_seconds")  # step metrics that count as training time
# The validation split and data.train_subset / test_subset are the same images whatever the run's seed, so runs that
# differ in seed differ in initialization and data order only, and are scored on the same images.
DATA_SPLIT_SEED = 0
DEFAULT_DATA_ROOTS = [Path("~/.cache/slimlab/data"), Path(__file__).resolve().parents[2] / "shared" / "datasets"]


def data_roots(config: ExperimentConfig) -> tuple[Path, ...]:
    """Where dataset files are looked for: data.root, then $SLIMLAB_DATA, then ~/.cache/slimlab/data and ../shared/datasets."""
    env = [Path(p) for p in os.environ.get("SLIMLAB_DATA", "").split(os.pathsep) if p]
    return tuple(Path(r).expanduser() for r in [*config.data.root, *env, *DEFAULT_DATA_ROOTS])


def resolve_device(name: str, planned: str | None = None) -> torch.device:
    """train.device as a torch device; `planned` is what the run id was computed for when train.device is `auto`."""
    name = planned if name == "auto" and planned else name
    if name == "cuda" and not torch.cuda.is_available():
        raise SlimlabError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _dataset_request(config: ExperimentConfig, progress: bool) -> DatasetRequest:
    return DatasetRequest(roots=data_roots(config), cache_dir=Path("~/.cache/slimlab").expanduser(), download=config.data.download,
                          path=Path(config.data.path) if config.data.path else None, options={"progress": progress, **config.data.options})


def prepare_data(config: ExperimentConfig, progress: bool = True, device: str | None = None) -> Prepared:
    dataset = load_dataset(config.data.name, _dataset_request(config, progress))
    train_split, val_split = split_validation(dataset.train, config.data.val_size, seed=DATA_SPLIT_SEED)
    if config.data.train_subset:
        train_split = balanced_subset(train_split, config.data.train_subset, seed=DATA_SPLIT_SEED)
    if config.train.epochs and len(train_split) < config.train.batch_size:  # before training, not mid-way through it
        raise ConfigError(f"the training split has {len(train_split)} images ({config.data.name}: {len(dataset.train)} "
                          f"training images less data.val_size {config.data.val_size}"
                          f"{f', then data.train_subset {config.data.train_subset}' if config.data.train_subset else ''}), "
                          f"fewer than train.batch_size ({config.train.batch_size}): training drops a short last batch, "
                          "so no step would run; lower train.batch_size or data.val_size")
    test = dataset.test
    if config.data.test_subset:
        test = balanced_subset(test, config.data.test_subset, seed=DATA_SPLIT_SEED)
    return Prepared(dataset, train_split, val_split, test, resolve_device(config.train.device, device))


@dataclass(frozen=True)
class RunOptions:
    """How a run executes, apart from what it computes (none of this is in the run id)."""

    progress: bool = True
    force: bool = False  # run a done run again, reusing a finished training of the same training config
    retrain: bool = False  # like force, and train again from scratch too (e.g. after a change to the training code)
    snapshot_epochs: frozenset[int] = frozenset()  # epochs the training keeps for other runs of the same parent
    device: str | None = None  # what train.device `auto` resolves to (the executor's choice); None: this machine
    defer_latency: bool = False  # leave latency pending, to be timed alone later (measure_pending_latency)


def run(config: ExperimentConfig, store: Store | str | Path = DEFAULT_STORE, progress: bool = True, force: bool = False,
        retrain: bool = False, snapshot_epochs: Iterable[int] = (), options: RunOptions | None = None) -> RunRecord:
    """Train, compress, measure and record one experiment; a `done` run with the same config is returned without work.

    `force` runs a done run again, reusing a finished training of the same training config; `retrain` (which
    implies `force`) trains again from scratch too, e.g. after a change to the training code. `snapshot_epochs`
    are epochs whose weights the training keeps beyond those this config's steps rewind to: a study passes those
    its other runs of the same training need, so that training happens once. `options` gives all of these at once."""
    options = options or RunOptions(progress, force or retrain, retrain, frozenset(snapshot_epochs))
    store = store if isinstance(store, Store) else Store(store)
    run_id = config_hash(config, options.device)
    with store.exclusive(f"run-{run_id}", f"slimlab: waiting for another process running {run_id}"):
        existing = store.get(run_id)  # read under the lock: the other process may just have finished it
        if existing is not None and existing.status == "done" and not options.force:
            return existing
        return _run_locked(config, run_id, store, options)


def failure_class(exc: BaseException) -> str:
    """Which kind of failure an exception is (slimlab.store.FAILURE_CLASSES): only transient ones are retried."""
    if isinstance(exc, TrainingDiverged):
        return "diverged"
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return "oom"
    if isinstance(exc, KeyboardInterrupt):
        return "killed"
    return "error"


def _where(exc: BaseException) -> str:
    """'in slimlab/quantize/torch_engine.py:88 (calibrate), from ao/quantization/observer.py:1290 (forward)': the
    innermost slimlab frame (the operation the user asked for) and the frame below it where the error arose."""
    package = Path(__file__).resolve().parent
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(package)]
    def short(frame) -> str:
        path = Path(frame.filename).resolve()
        shown = path.relative_to(package.parent) if path.is_relative_to(package) else Path(*path.parts[-3:])
        return f"{shown.as_posix()}:{frame.lineno} ({frame.name})"
    text = f"in {short(ours[-1])}" if ours else ""
    return text + (f", from {short(frames[-1])}" if frames and (not ours or frames[-1] is not ours[-1]) else "")


def _run_locked(config: ExperimentConfig, run_id: str, store: Store, options: RunOptions) -> RunRecord:
    # What can be checked before work starts is checked before a record exists: a dataset that cannot be read, a
    # factory that is not there, weights or an output width that do not fit the data fail here, in one line, and
    # leave no `failed` run behind.
    data = prepare_data(config, options.progress, options.device)
    model = _build_model(config, data)
    store.start(run_id, config.model_dump(mode="json"), config.name)
    try:
        with store.heartbeat(run_id):
            metrics, notes, env, history = _execute(config, run_id, store, options, data, model)
    except BaseException as exc:
        kind = failure_class(exc)
        reasons = {"killed": "interrupted", "diverged": str(exc)}
        store.fail(run_id, reasons.get(kind, f"{type(exc).__name__}: {exc}"), kind)
        if kind == "diverged":  # a finding about this config, not a crash: the study goes on
            return store.get(run_id)
        if kind == "error" and isinstance(exc, Exception) and not isinstance(exc, SlimlabError):
            path = store.save_artifact(run_id, "error.txt", "".join(traceback.format_exception(exc)).encode())
            raise RunFailed(f"run {run_id[:8]} failed {_where(exc)}: {type(exc).__name__}: "
                            f"{(str(exc).strip().splitlines() or [''])[0]} (the traceback is in {path})") from exc
        raise
    store.finish(run_id, metrics, notes, env, history)
    return store.get(run_id)


def train_parent(config: ExperimentConfig, store: Store, options: RunOptions = RunOptions()) -> list[dict]:
    """A study's training stage on its own: train (or resume, or find finished) the parent that runs share."""
    data = prepare_data(config, options.progress, options.device)
    model = _build_model(config, data)
    history, _ = _train_stage(config, model, data, store, options.progress, {}, options.retrain, set(options.snapshot_epochs))
    return history


def _build_model(config: ExperimentConfig, data: Prepared) -> nn.Module:
    torch.manual_seed(config.seed)
    c, h, w = data.dataset.image_shape
    model = create_model(config.model.name, data.dataset.num_classes, c, h, weights=config.model.weights, **config.model.options)
    model = model.to(data.device)
    _check_output_width(model, config.model.name, data.dataset.num_classes, (2, c, h, w), data.device)
    _check_layer_patterns(config, model)
    return model.to(memory_format=torch.channels_last) if config.train.channels_last and c > 1 else model


def check_inputs(config: ExperimentConfig) -> None:
    """What a run checks before its record exists, on the CPU and without splitting the data: the dataset loads, the
    factory builds, the weights fit, one logit per class. A study calls it once per data and model before it starts."""
    dataset = load_dataset(config.data.name, _dataset_request(config, progress=False))
    c, h, w = dataset.image_shape
    model = create_model(config.model.name, dataset.num_classes, c, h, weights=config.model.weights, **config.model.options)
    _check_output_width(model, config.model.name, dataset.num_classes, (2, c, h, w), torch.device("cpu"))
    _check_layer_patterns(config, model)


def _check_layer_patterns(config: ExperimentConfig, model: nn.Module) -> None:
    """Every layer pattern of the steps (skip, include, exclude) names some module of the model: a typo is one line
    before the record exists, not a failed run after the training."""
    names = [n for n, _ in model.named_modules() if n]
    for index, step in enumerate(config.steps):
        for key in ("skip", "include", "exclude"):
            for pattern in step.get(key) or ():
                if not any(fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, f"{pattern}.*") for n in names):
                    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                    raise ConfigError(f"steps[{index}].{key}: pattern {pattern!r} matches no module of {type(model).__name__} "
                                      f"(its modules: {shown})")


def _check_output_width(model: nn.Module, name: str, num_classes: int, shape: tuple, device: torch.device) -> None:
    """One forward pass when the model is built: a factory whose output does not give one logit per class fails here,
    in one line, not in the loss mid-training."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(shape, device=device))
    except Exception as exc:
        raise ConfigError(f"model.name: '{name}' fails on a batch of {tuple(shape)} images: {type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (shape[0], num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model.name: '{name}' gives {got} for a batch of {tuple(shape)} images; the dataset has "
                          f"{num_classes} classes, so it must give ({shape[0]}, {num_classes}): one logit per class")


def _execute(config: ExperimentConfig, run_id: str, store: Store, options: RunOptions, data: Prepared, model: nn.Module):
    # Import the step modules now: a run of hours must not import, after training, code that changed on disk meanwhile.
    kinds = step_kinds()
    progress = options.progress
    device = data.device

    snapshots: dict[int, dict] = {}
    history, energy = _train_stage(config, model, data, store, progress, snapshots, options.retrain, set(options.snapshot_epochs))
    train_seconds = sum(r["seconds"] for r in history)

    key = training_hash(config, device.type)
    shared = SharedResults(store, key)
    context = StepContext(config, data, progress, history=list(history), weights_at_epoch=snapshots,
                          time_latency=not options.defer_latency, cache_load=shared.load, cache_save=shared.save,
                          load_phase=lambda name: store.load_phase(run_id, name), save_phase=lambda name, state: store.save_phase(run_id, name, state))
    context.notes["trained_weights"] = str(store.training_dir(key) / TRAINED_WEIGHTS)
    if history:
        context.notes["train_precision"] = history[-1]["precision"]
    if config.steps:  # the float reference the compression steps are judged against
        context.metrics.update(_accuracy(model, context, "float_"))
    step_input_counts: dict = {}
    with shared:  # releases a shared result's lock that a failed step held
        for index, step in enumerate(config.steps):
            context.step_index = index
            # Counts of the model this step receives: an engine outside torch (ONNX Runtime) reports the last of these.
            step_input_counts = _counts(model, context.example(1))
            cfg = kinds[step["kind"]].config_type.model_validate({k: v for k, v in step.items() if k != "kind"})
            model = kinds[step["kind"]].apply(model, cfg, context)

    metrics = {"train_seconds": train_seconds, "train_epochs": len(history), **context.metrics}
    # Training time of the whole recipe: the float training plus any fine-tuning a step did (QAT, pruning rounds).
    metrics["total_train_seconds"] = train_seconds + sum(v for k, v in context.metrics.items() if k in STEP_TRAIN_SECONDS)
    if history and "val_top1" in history[-1]:
        metrics["val_top1"] = history[-1].get("final_val_top1", history[-1]["val_top1"])  # of the weights measured
    notes = dict(context.notes)
    metrics_energy, notes_energy = _training_energy(history, energy)
    metrics.update(metrics_energy)
    notes.update(notes_energy)
    notes.update(_code_notes(store, key))
    metrics.update(_measure_model(model, context, run_id, store, notes, step_input_counts, options.defer_latency))
    for name, blob in context.artifacts.items():
        store.save_artifact(run_id, name, blob)
    # The history on record: training epochs, then whatever the steps trained or evaluated (QAT epochs, pruning rounds).
    return metrics, notes, measure.environment(context.measure_device or device), context.history


def _training_energy(history: list[dict], meter: measure.EnergyMeter) -> tuple[dict, dict]:
    """train_energy_j: the sum of every epoch's energy, so a training resumed after a kill counts all its parts."""
    readings = [r.get("energy_j") for r in history]
    if history and all(e is not None for e in readings):
        sources = ", ".join(sorted({r.get("energy_source", "?") for r in history}))
        reused = "; the training was reused from an earlier run with the same training config" if meter.reused else ""
        return ({"train_energy_j": sum(readings)},
                {"train_energy_j": f"measured with {sources} over the training loop, the sum of its {len(history)} epochs{reused}"})
    if any(e is not None for e in readings):
        missing = [r["epoch"] for r, e in zip(history, readings) if e is None]
        return {}, {"energy": f"not measured: epochs {missing} ran where no energy counter was readable"}
    return {}, {"energy": f"not measured: {meter.reason or 'no energy counter was read during training'}"}


class _EpochSnapshots:
    """Training callback: keep the weights after the given epochs, in memory and in the store."""

    def __init__(self, epochs: set[int], save: Callable[[int, dict], None]):
        self.epochs, self.save = epochs, save

    def on_epoch_end(self, epoch: int, model: nn.Module, record: dict) -> None:
        if epoch + 1 in self.epochs:
            self.save(epoch + 1, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


def _train_stage(config, model, data: Prepared, store: Store, progress: bool, snapshots: dict[int, dict], retrain: bool = False,
                 extra_snapshots: set[int] = frozenset()):
    """Train once per training config: checkpoints each epoch, resume after a kill, reuse a finished training
    (unless `retrain`, which starts from scratch and replaces what was stored)."""
    meter = measure.EnergyMeter(data.device, enabled=config.measure.energy)
    if config.train.epochs == 0:
        meter.reason = "no training"
        return [], meter
    key = training_hash(config, data.device.type)
    # Another process training the same parent (a second invocation of the study) finishes first; this one then
    # finds its trained.pt instead of training it again.
    with store.exclusive(f"train-{key}", f"slimlab: waiting for another process training {key}"):
        return _train_or_reuse(config, model, data, store, progress, snapshots, retrain, extra_snapshots, key, meter)


def _train_or_reuse(config, model, data: Prepared, store: Store, progress: bool, snapshots: dict[int, dict], retrain: bool,
                    extra_snapshots: set[int], key: str, meter: measure.EnergyMeter):
    wanted = rewind_epochs(config) | {e for e in extra_snapshots if 0 < e <= config.train.epochs}
    finished = None if retrain else store.load_training_file(key, TRAINED_WEIGHTS)
    for epoch in wanted if not retrain else ():
        if (saved := store.load_training_file(key, f"weights_epoch{epoch}.pt")) is not None:
            snapshots[epoch] = saved
    if finished is not None and wanted <= set(snapshots):
        model.load_state_dict(finished["model"])
        meter.reason = "training reused from an earlier run with the same seed, data, model and train config"
        meter.reused = True
        return finished["history"], meter

    def keep(epoch: int, state: dict) -> None:
        snapshots[epoch] = state
        store.save_training_file(key, f"weights_epoch{epoch}.pt", state)

    saved = None if retrain else store.load_training_file(key, store.CHECKPOINT)
    resume = TrainState.from_dict(saved) if saved else None
    if resume is not None and wanted - set(snapshots) and min(wanted - set(snapshots)) <= resume.epoch:
        resume = None  # a snapshot epoch was passed before it was asked for: train again from the start
    train_loader = data.loader(data.train, config.train.batch_size, config, training=True)
    val_loader = data.loader(data.val, config.measure.eval_batch_size, config) if len(data.val) else None
    with meter:
        history = train(model, train_loader, config.train, val_loader=val_loader, resume=resume, progress=progress,
                        callbacks=[meter, *([_EpochSnapshots(wanted, keep)] if wanted else [])],
                        save_checkpoint=lambda state: _checkpoint(store, key, state, config.train.epochs))
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    code = measure.code_version()
    store.save_training_file(key, TRAINED_WEIGHTS, {"model": weights, "history": history, "code": code})
    store.save_progress(key, {**(store.training_progress(key) or {}), "code": code})  # read by every run of this parent
    return history, meter


def _checkpoint(store: Store, key: str, state: TrainState, epochs: int) -> None:
    """The epoch checkpoint a killed training resumes from, and the progress `slimlab status` reads."""
    store.save_training_file(key, store.CHECKPOINT, state.to_dict())
    store.save_progress(key, {"epoch": state.epoch, "epochs": epochs, "seconds": sum(r["seconds"] for r in state.history)})


def _code_notes(store: Store, key: str) -> dict:
    """Say so when the trained parent was trained by other code than the code running now."""
    then, now = (store.training_progress(key) or {}).get("code"), measure.code_version()  # not the weights file again
    if not then or then == now:
        return {}
    return {"trained_by_code": f"the parent was trained at commit {then['commit']}{' (dirty)' if then['dirty'] else ''}, "
                               f"this run is at {now['commit']}{' (dirty)' if now['dirty'] else ''}"}


def _accuracy(model: nn.Module, context: StepContext, prefix: str = "") -> dict:
    device = context.measure_device or context.data.device
    # Test figures are fp32 on every device, so a float model trained on a GPU with autocast compares fairly with its
    # int8 version measured on the CPU.
    result = evaluate(model, context.test_loader(device=device), amp=False, progress=context.progress, desc="test")
    return {f"{prefix}top1": result["top1"], f"{prefix}top5": result["top5"], f"{prefix}test_loss": result["loss"]}


def _measure_model(model: nn.Module, context: StepContext, run_id: str, store: Store, notes: dict, step_input_counts: dict,
                   defer_latency: bool = False) -> dict:
    """Accuracy, size of the saved deployable file, counts and latency of the final model (or latency pending)."""
    cfg = context.config.measure
    device = context.measure_device or context.data.device
    model = model.to(device) if not _is_quantized(model) else model
    metrics = _accuracy(model, context)
    if cfg.flip_tta:
        tta = evaluate(model, context.test_loader(device=device), amp=False, flip_tta=True)
        metrics.update(top1_flip_tta=tta["top1"], top5_flip_tta=tta["top5"])
    example = context.example(1, device)
    metrics.update(_save_deployables(model, context, run_id, store, notes, example))
    fmt = notes["model_format"]
    counts = _counts(model, example)
    if counts["params"] == 0 and step_input_counts:  # an engine outside torch (ONNX Runtime): the layers it was handed
        counts = step_input_counts
        notes["params"] = "params and macs of the model handed to the engine; its weights live outside torch"
    metrics.update(_named_counts(counts, context.config.steps, notes))
    if not cfg.latency:
        return metrics
    if defer_latency and fmt in DEFERRABLE_FORMATS:
        notes.update(latency_status="pending", example_shape=list(example.shape[1:]),
                     latency="pending: timed later, alone on the machine, in the study's latency stage")
        return metrics
    figures, latency_notes = time_latency(model, cfg, lambda batch: context.example(batch, device))
    latency_notes["latency_flagged"] = notes.get("latency_flagged", []) + latency_notes.get("latency_flagged", [])  # a step's too
    notes.update({k: v for k, v in latency_notes.items() if v}, latency_status="measured")
    ratios = speedups({**context.metrics, **figures}, cfg.batch_sizes)
    notes["latency_flagged"] = inherit_flags(notes.get("latency_flagged", []), ratios)
    return {**metrics, **figures, **ratios}


def _save_deployables(model: nn.Module, context: StepContext, run_id: str, store: Store, notes: dict, example: torch.Tensor) -> dict:
    """The deployable file, the same with the preprocessing inside (raw pixels in), and beside each a JSON that says
    what to feed it (normalization, input size, channel order, class names); the raw file is loaded back and scored
    on the raw test images, as a deployment would run it."""
    blob, fmt = (context.serialize or measure.serialize_deployable)(model, example)
    name = MODEL_FILES.get(fmt, "model.pt")
    store.save_artifact(run_id, name, blob)
    metrics = measure.size_figures(blob, fmt)
    notes["model_format"] = fmt  # torchscript | state_dict | onnx | torch.export: what model_size_bytes measures
    notes["model_size_bytes"] = f"bytes of {name} ({fmt}) on disk; deflate = zlib level 9 of the same bytes"
    notes["weight_payload_bytes"] = f"bytes of the tensors {name} stores (parameters and buffers, int8 one byte each), without its code"
    dataset, test = context.data.dataset, context.data.test
    loader = context.test_loader(device=example.device)
    described = [describe_input(name, fmt, False, dataset)]
    raw_blob, why_not = with_preprocessing(model, fmt, blob, test.images[:1].to(example.device), dataset.mean, dataset.std,
                                           loader.channels_last) if fmt != "state_dict" else (None, "the model could not be traced")
    if raw_blob is not None:
        raw_name = RAW_FILES[fmt]
        store.save_artifact(run_id, raw_name, raw_blob)
        described.append(describe_input(raw_name, fmt, True, dataset))
        metrics["deployable_raw_top1"] = raw_top1(load_raw_file(raw_blob, fmt, example.device), test.images.to(example.device), test.labels,
                                                  context.config.measure.eval_batch_size)
        notes["deployable_raw_top1"] = (f"{raw_name} loaded back with torch or onnxruntime alone and fed the raw uint8 test images, "
                                        f"{loader.batch_size} at a time; top-1 by argmax")
    else:
        notes["deployable_raw"] = f"no file with the preprocessing inside: {why_not}"
    for entry in described:
        store.save_artifact(run_id, Path(entry["file"]).stem + ".json", (json.dumps(entry, indent=1) + "\n").encode())
    notes["deployable_files"] = described
    return metrics


def measure_pending_latency(store: Store, run_id: str) -> RunRecord:
    """The latency stage of one run: load its deployable file back and time it; run alone on the machine."""
    record = store.get(run_id)
    cfg = ExperimentConfig.model_validate(record.config).measure
    device = torch.device(record.env.get("device", "cpu"))
    model = load_deployable(store.run_dir(run_id), device)
    generator = torch.Generator().manual_seed(0)
    shape = record.notes["example_shape"]
    figures, latency_notes = time_latency(model, cfg, lambda batch: torch.randn(batch, *shape, generator=generator).to(device))
    notes = {"latency_noisy": "", "latency_flagged": [], **latency_notes, "latency_status": "measured",  # a clean retiming clears a flag
             "latency_host": f"{platform.node()} ({measure.cpu_model()})",
             "latency": f"{latency_notes['latency']}; timed alone in the latency stage"}
    store.update_metrics(run_id, figures, notes)
    return store.get(run_id)


def _counts(model: nn.Module, example: torch.Tensor) -> dict:
    """Parameters and MACs; counting MACs runs a forward pass, on a copy unless the model is int8 (which cannot move)."""
    return {**measure.count_parameters(model), **measure.count_macs(copy.deepcopy(model) if not _is_quantized(model) else model, example)}


def _named_counts(counts: dict, steps: list[dict], notes: dict) -> dict:
    """Zeros and a smaller parameter count are pruning's only when a prune step ran: otherwise the zeros are weights
    that rounded to zero (int8) or were trained so (`zero_weight_fraction`, not `sparsity`), and an int8 model's
    parameters are fewer because batch norm was folded into the convolutions."""
    kinds = {step["kind"] for step in steps}
    if "prune" in kinds:
        return counts
    counts = {**counts, "zero_weight_fraction": counts["sparsity"]}
    del counts["sparsity"]
    notes["zero_weight_fraction"] = "share of weights equal to zero with no prune step run: int8 rounding or training, not sparsity"
    if "quantize" in kinds:
        notes.setdefault("params", "parameters of the quantized model: batch norm folded into the convolutions, not pruned")
    return counts


def _is_quantized(model: nn.Module) -> bool:
    """True for converted int8 models, which run on the CPU only."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") and type(m).__name__ != "FloatFunctional" for m in model.modules())
