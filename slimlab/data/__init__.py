"""Dataset registry: a name maps to a loader returning uint8 image tensors and labels."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from slimlab.errors import ConfigError


@dataclass(frozen=True)
class ImageSplit:
    """Images as uint8 NCHW plus int64 labels; the whole split lives in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 tensor shaped N,C,H,W")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index])


@dataclass(frozen=True)
class ImageDataset:
    """A train and a test split with the facts a model and a loader need."""

    name: str
    train: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])


@dataclass(frozen=True)
class DatasetRequest:
    """What a loader needs to find its files: search roots, cache, download permission, options."""

    roots: tuple[Path, ...]
    cache_dir: Path
    download: bool
    path: Path | None = None
    options: dict = field(default_factory=dict)


Loader = Callable[[DatasetRequest], ImageDataset]
_REGISTRY: dict[str, tuple[Loader, str]] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}  # the data.options keys each loader reads; any other key is a typo
_FILES: dict[str, tuple[str, ...] | None] = {}  # where a dataset's files lie under a data root (any one suffices)


def register_dataset(name: str, description: str = "", options: tuple[str, ...] = (), files: tuple[str, ...] | None = None):
    """Register a loader function under `name`; `options` lists the data.options keys it reads; `files` the paths
    under a data root any one of which means the dataset is on this machine (None: it needs no files, or data.path)."""

    def wrap(fn: Loader) -> Loader:
        _REGISTRY[name] = (fn, description or (fn.__doc__ or "").strip().splitlines()[0])
        _OPTIONS[name] = tuple(options)
        _FILES[name] = files
        return fn

    return wrap


def dataset_presence(name: str, roots: tuple[Path, ...]) -> tuple[str, Path | None]:
    """(`present`, where) or (`missing`, None), or why the question does not apply (generated data, a view of another
    dataset, your own path)."""
    _load_builtin()
    files = _FILES.get(name)
    if files is None:
        return {"synthetic": "generated", "heldout": "view"}.get(name, "data.path"), None
    for root in roots:
        for relative in files:
            if (Path(root).expanduser() / relative).exists():
                return "present", Path(root).expanduser() / relative
    return "missing", None


def dataset_options(name: str) -> tuple[str, ...]:
    """The data.options keys a registered dataset accepts."""
    _load_builtin()
    return _OPTIONS.get(name, ())


def list_datasets(pattern: str = "*") -> dict[str, str]:
    """Registered dataset names matching a glob, with a one-line description each."""
    _load_builtin()
    return {n: d for n, (_, d) in sorted(_REGISTRY.items()) if fnmatch.fnmatch(n, pattern)}


def load_dataset(name: str, request: DatasetRequest) -> ImageDataset:
    """Load a registered dataset by name."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"data.name: unknown dataset '{name}'; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][0](request)


def _load_builtin() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from slimlab.data import cifar, heldout, idx, imagefolder, synthetic  # noqa: F401
