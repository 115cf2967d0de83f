"""Shared fixtures: tiny configs on the synthetic dataset, generated canonical-format files, one thread for determinism."""
from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
JPEG_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"

torch.set_num_threads(1)  # the same numbers on any machine, and leaves a core for the rest

import slimlab.measure  # noqa: E402

# Tests check what a latency figure says, not its accuracy: one attempt, no minimum window (tests/test_measure.py
# exercises both).
slimlab.measure.LATENCY_ATTEMPTS, slimlab.measure.MIN_WINDOW_S = 1, 0.0


def tiny_config(**overrides) -> dict:
    """A run that takes about a second: resnet20 on 64 synthetic images."""
    raw = {
        "data": {"name": "synthetic", "val_size": 32, "options": {"train_size": 96, "test_size": 64}},
        "model": {"name": "resnet20"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "warmup_epochs": 0},
        "measure": {"batch_sizes": [1, 4], "warmup": 1, "repeats": 5, "threads": 1},
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


def write_cifar_batch(path: Path, n: int, label_key: str, labels_range: int, seed: int, extra: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, labels_range, n).tolist()
    batch = {b"data": data, label_key.encode(): labels, **(extra or {})}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return {"data": data, "labels": labels}


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    """A cifar-10-batches-py folder in the canonical format, 20 images per batch."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 20, "labels", 10, seed=i)
    write_cifar_batch(folder / "test_batch", 10, "labels", 10, seed=9)
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}, protocol=2))
    return folder


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never download: any attempt fails loudly."""
    import urllib.request

    def refuse(*a, **k):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("SLIMLAB_DATA", os.environ.get("SLIMLAB_DATA", ""))


# A model that appends a line to a file at the start of each training epoch (the loop's own model.train() call; runs
# that reuse a parent never make it), so trainings can be counted across worker processes. `crash` makes the
# process die as a segfault would; `kill_once` SIGKILLs it the first time only.
COUNTED_MODEL = '''
import os, signal, sys
from torch import nn
from slimlab.models import create_model

class Counted(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

    def train(self, mode=True):
        caller = sys._getframe(1)  # the training loop's epoch, not evaluate() restoring the mode
        if mode and caller.f_globals.get("__name__") == "slimlab.train" and caller.f_code.co_name == "_train_epoch":
            with open(os.environ["COUNT_FILE"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        return super().train(mode)

def build(num_classes, in_channels, image_size, crash=False, kill_once=None):
    if crash:
        os.kill(os.getpid(), signal.SIGSEGV)
    if kill_once and not os.path.exists(kill_once):
        open(kill_once, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return Counted(create_model("resnet20", num_classes, in_channels, image_size))
'''


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """The counting model on the path of this process and of the workers it spawns; returns the count file."""
    (tmp_path / "counted.py").write_text(COUNTED_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    count = tmp_path / "trainings.txt"
    monkeypatch.setenv("COUNT_FILE", str(count))
    return count


def write_study(tmp_path, study: dict, base: dict | None = None) -> Path:
    """study.yaml (with `base: base.yaml`) and its base experiment, by default one epoch of the counting model."""
    base = base or tiny_config(**{"train.epochs": 1, "model.name": "counted:build"})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **study}))
    return path
