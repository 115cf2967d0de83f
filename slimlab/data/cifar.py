"""CIFAR-10 and CIFAR-100 from their canonical python-pickle batches, read with a restricted unpickler."""
from __future__ import annotations

import codecs
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from slimlab.data import DatasetRequest, ImageDataset, ImageSplit, register_dataset
from slimlab.data.files import fetch
from slimlab.errors import BadDataError, ConfigError, DataNotFoundError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# The canonical batches store `data` as a numpy uint8 array, so numpy's array reconstructor is the only
# callable allowed; every other global (os.system, builtins.eval, ...) is refused before it can run.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, bytes, numbers and plain numpy arrays; any other class or function is refused.

    CIFAR batches are pickles, and a pickle can run arbitrary code through find_class.
    """

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            if name == "_reconstruct":
                return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own reconstructor, whatever its module path
            return codecs.encode if module == "_codecs" else getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR batches hold only plain data")


def load_pickle_batch(data: bytes) -> dict:
    """Decode one CIFAR batch file; keys come back as str."""
    obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError("a CIFAR batch must be a dict")
    for value in obj.values():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:
            raise pickle.UnpicklingError("a CIFAR batch must not hold object arrays")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _decode_members(source: Path, members: dict[str, bytes]) -> dict[str, dict]:
    """Each batch file decoded; one that is not plain data (a pickle that would run code) is refused in one line."""
    decoded = {}
    for name, data in members.items():
        try:
            decoded[name] = load_pickle_batch(data)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise BadDataError(f"{source}/{name}: not loaded: {exc}") from None
    return decoded


def _to_split(batches: list[dict], label_key: str) -> ImageSplit:
    rows = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1) for b in batches])
    images = torch.from_numpy(rows.reshape(-1, 3, 32, 32).copy())
    labels = torch.tensor([int(x) for b in batches for x in b[label_key]], dtype=torch.int64)
    return ImageSplit(images, labels)


def _read_members(archive_or_dir: Path, folder: str, names: list[str]) -> dict[str, bytes]:
    if archive_or_dir.is_dir():
        return {n: (archive_or_dir / n).read_bytes() for n in names}
    wanted = {f"{folder}/{n}": n for n in names}
    found: dict[str, bytes] = {}
    with tarfile.open(archive_or_dir) as tar:
        for member in tar:
            if member.name in wanted:
                found[wanted[member.name]] = tar.extractfile(member).read()
    missing = set(names) - set(found)
    if missing:
        raise DataNotFoundError(f"{archive_or_dir} lacks {sorted(missing)}")
    return found


def _locate(request: DatasetRequest, folder: str, archive: str, url: str, sha: str) -> Path:
    """An unpacked folder if present, else the archive (found or downloaded, checksum verified)."""
    if request.path is not None:
        return Path(request.path).expanduser()
    for root in request.roots:
        if (Path(root).expanduser() / folder).is_dir():
            return Path(root).expanduser() / folder
    return fetch(archive, request.roots, url, sha, request.download)


@register_dataset("cifar10", "CIFAR-10 (canonical python batches; 50k train, 10k test, 10 classes)",
                  files=("cifar-10-batches-py", "cifar-10-python.tar.gz"))
def load_cifar10(request: DatasetRequest) -> ImageDataset:
    """CIFAR-10 from cifar-10-batches-py."""
    source = _locate(request, "cifar-10-batches-py", "cifar-10-python.tar.gz", CIFAR10_URL, CIFAR10_SHA256)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    raw = _decode_members(source, _read_members(source, "cifar-10-batches-py", names))
    classes = tuple(c.decode() if isinstance(c, bytes) else c for c in raw["batches.meta"]["label_names"])
    train = _to_split([raw[f"data_batch_{i}"] for i in range(1, 6)], "labels")
    test = _to_split([raw["test_batch"]], "labels")
    return ImageDataset("cifar10", train, test, classes, CIFAR10_MEAN, CIFAR10_STD, source=str(source))


@register_dataset("cifar100", "CIFAR-100 (canonical python pickles; fine labels, or coarse with data.options.labels=coarse)",
                  options=("labels",), files=("cifar-100-python", "cifar-100-python.tar.gz"))
def load_cifar100(request: DatasetRequest) -> ImageDataset:
    """CIFAR-100 from cifar-100-python; `options.labels` picks fine (100) or coarse (20) labels."""
    labels = request.options.get("labels", "fine")
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"data.options.labels must be 'fine' or 'coarse', got {labels!r}")
    source = _locate(request, "cifar-100-python", "cifar-100-python.tar.gz", CIFAR100_URL, CIFAR100_SHA256)
    raw = _decode_members(source, _read_members(source, "cifar-100-python", ["train", "test", "meta"]))
    names = raw["meta"][f"{labels}_label_names"]
    classes = tuple(c.decode() if isinstance(c, bytes) else c for c in names)
    key = f"{labels}_labels"
    return ImageDataset("cifar100", _to_split([raw["train"]], key), _to_split([raw["test"]], key), classes,
                        CIFAR100_MEAN, CIFAR100_STD, source=str(source))
