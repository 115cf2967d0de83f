"""Shared fixtures: tiny configs on the synthetic dataset, generated canonical-format files, one thread for determinism."""
from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
JPEG_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.xz"

torch.set_num_threads(1)  # the same numbers on any machine, and leaves a core for the rest


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
