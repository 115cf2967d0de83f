"""MNIST and Fashion-MNIST from their canonical IDX files (optionally gzipped)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from slimlab.data import DatasetRequest, ImageDataset, ImageSplit, register_dataset
from slimlab.data.files import fetch
from slimlab.errors import DataNotFoundError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(data: bytes) -> np.ndarray:
    """Parse one IDX file: magic (0,0,dtype,ndim), big-endian dims, then the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError("not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    values = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if values.size != int(np.prod(dims)):
        raise ValueError(f"IDX file holds {values.size} values, header says {dims}")
    return values.reshape(dims)


def _read(folder_roots: tuple[Path, ...], name: str, mirror: str, download: bool) -> np.ndarray:
    for candidate in (name, name + ".gz"):
        from slimlab.data.files import find_file
        if (found := find_file(candidate, folder_roots)) is not None:
            break
    else:
        found = fetch(name + ".gz", folder_roots, f"{mirror}{name}.gz", None, download)
    raw = found.read_bytes()
    return read_idx(gzip.decompress(raw) if found.suffix == ".gz" else raw)


def _load(request: DatasetRequest, name: str, folder: str, mirror: str, classes: tuple[str, ...], mean, std) -> ImageDataset:
    roots = (Path(request.path).expanduser(),) if request.path else tuple(Path(r).expanduser() / folder for r in request.roots)
    try:
        arrays = [_read(roots, f, mirror, request.download) for f in _FILES]
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"{name}: {exc}") from exc
    train_x, train_y, test_x, test_y = arrays
    split = lambda x, y: ImageSplit(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return ImageDataset(name, split(train_x, train_y), split(test_x, test_y), classes, mean, std, source=str(roots[0]))


@register_dataset("mnist", "MNIST handwritten digits (IDX files; 60k train, 10k test, 28x28 gray)",
                  files=tuple(f"mnist/{_FILES[0]}{gz}" for gz in ("", ".gz")))
def load_mnist(request: DatasetRequest) -> ImageDataset:
    """MNIST from IDX files."""
    return _load(request, "mnist", "mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/",
                 tuple(str(i) for i in range(10)), (0.1307,), (0.3081,))


@register_dataset("fashion_mnist", "Fashion-MNIST (IDX files; 60k train, 10k test, 28x28 gray)",
                  files=tuple(f"fashion_mnist/{_FILES[0]}{gz}" for gz in ("", ".gz")))
def load_fashion_mnist(request: DatasetRequest) -> ImageDataset:
    """Fashion-MNIST from IDX files."""
    classes = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
    return _load(request, "fashion_mnist", "fashion_mnist",
                 "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", classes, (0.2860,), (0.3530,))
