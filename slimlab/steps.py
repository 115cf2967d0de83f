"""Registry of compression steps (quantize, prune...) that run after training: config type + function per kind."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel

if TYPE_CHECKING:  # types only: the registry stays importable without torch or the data package
    import torch
    from torch import nn

    from slimlab.config import ExperimentConfig
    from slimlab.data.loader import DeviceLoader
    from slimlab.data.prepared import Prepared

@dataclass(frozen=True)
class StepKind:
    config_type: type[BaseModel]
    apply: Callable[..., Any]  # apply(model, config, context) -> model


_STEPS: dict[str, StepKind] = {}


@dataclass
class StepContext:
    """What a compression step may use, and where it reports; steps never write files themselves."""

    config: ExperimentConfig
    data: Prepared
    progress: bool
    metrics: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    measure_device: torch.device | None = None
    weights_at_epoch: dict[int, dict] = field(default_factory=dict)  # snapshots asked for by steps (late rewinding)
    step_index: int = 0  # which of config.steps is running
    time_latency: bool = True  # False when other runs execute beside this one: steps then time nothing
    # Results a step may share with sibling runs of the same parent (e.g. early pruning rounds); no-ops by default.
    cache_load: Callable[[str], object | None] = lambda key: None
    cache_save: Callable[[str, object], None] = lambda key, value: None
    # A step whose result is not TorchScript-able (an ONNX Runtime session) supplies its own deployable file.
    serialize: Callable[[nn.Module, torch.Tensor], tuple[bytes, str]] | None = None
    # Where a phase that trains keeps its epoch checkpoint (the run's folder); no-ops by default.
    load_phase: Callable[[str], dict | None] = lambda name: None
    save_phase: Callable[[str, dict], None] | None = None

    def resumable(self, phase: str) -> dict:
        """train() arguments for a phase that trains (a pruning round's retraining, QAT): it checkpoints every epoch
        and, after a kill or a requeue at the time limit, resumes inside the phase, not from its start."""
        if self.save_phase is None:
            return {}
        from slimlab.train import TrainState

        name, save = f"step{self.step_index}-{phase}", self.save_phase
        saved = self.load_phase(name)
        return {"resume": TrainState.from_dict(saved) if saved else None,
                "save_checkpoint": lambda state: save(name, state.to_dict())}

    def train_loader(self, batch_size: int | None = None) -> DeviceLoader:
        return self.data.loader(self.data.train, batch_size or self.config.train.batch_size, self.config, training=True)

    def calibration_loader(self, batch_size: int = 64) -> DeviceLoader:
        """Validation images if carved out, else training images; never the test set. Shuffled (by the seed), without
        augmentation, so that its first few batches are a fair sample of every class."""
        split = self.data.val if len(self.data.val) else self.data.train
        return self.data.loader(split, batch_size, self.config, shuffle=True)

    def example(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """`batch` normalized test images (repeated if the test set is smaller), for tracing and timing."""
        import torch

        device = device or self.measure_device or self.data.device
        test = self.data.test
        return self.test_loader(batch_size=batch, device=device).normalize(test.images[torch.arange(batch) % len(test)].to(device))

    def test_loader(self, batch_size: int | None = None, device: torch.device | None = None, shuffle: bool = False) -> DeviceLoader:
        """The test set in stored order; `shuffle` (by the seed) where only its first batches are used, as a sample."""
        from slimlab.data.loader import DeviceLoader

        loader = self.data.loader(self.data.test, batch_size or self.config.measure.eval_batch_size, self.config, shuffle=shuffle)
        if device is not None and device != loader.device:
            loader = DeviceLoader(self.data.test, loader.batch_size, self.data.dataset.mean, self.data.dataset.std, device=device,
                                  shuffle=shuffle, seed=self.config.seed)
        return loader



def register_step(kind: str, config_type: type[BaseModel]):
    """Register `fn(model, config, context) -> model` as the step named `kind`."""

    def wrap(fn):
        _STEPS[kind] = StepKind(config_type, fn)
        return fn

    return wrap


def step_kinds() -> dict[str, StepKind]:
    _load_builtin()
    return dict(_STEPS)


def _load_builtin() -> None:
    # Step modules register themselves on import; absent packages simply add no steps.
    import importlib

    for name in ("slimlab.quantize.step", "slimlab.prune.step"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
