"""Image-folder datasets (class sub-folders of JPEG/PNG), from a folder or a .tar/.tar.xz of one, decoded once into a cache."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from slimlab.data import DatasetRequest, ImageDataset, ImageSplit, register_dataset
from slimlab.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from slimlab.atomic import save_torch_atomic, write_atomic
from slimlab.data.files import fetch, load_tensors
from slimlab.errors import BadDataError, DataNotFoundError
from slimlab.fingerprint import content_fingerprint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg.tar.xz"
CIFAR10_JPEG_SHA256 = "5ecf915fb002507243f5563a0edb34d3c8838f39300b30750d89e18d643fac1e"
CACHE_FORMAT = 1  # bump when the cached tensor layout changes


def _entries_from_archive(archive: Path):
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(member.name).parts, tar.extractfile(member).read()


def _entries_from_folder(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path.relative_to(folder).parts, path.read_bytes()


def _split_of(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(split, class, file) from a path such as [root/]train/cat/0001.jpg; a path without train/test is 'all'.
    Hidden files and macOS archive metadata (`._x.jpg`, `__MACOSX/`) are not images."""
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return None
    for i, part in enumerate(parts[:-2]):
        if part in ("train", "test") and len(parts) - i == 3:
            return part, parts[i + 1], parts[-1]
    if len(parts) >= 2:
        return "all", parts[-2], parts[-1]
    return None


def decode_image_folder(source: Path, image_size: int | None, test_fraction: float, progress: bool = True) -> dict:
    """Decode every image once; returns tensors for train and test plus the sorted class names."""
    from PIL import Image
    from tqdm import tqdm

    entries = _entries_from_archive(source) if source.is_file() else _entries_from_folder(source)
    items, paths = [], []
    for parts, data in tqdm(entries, desc=f"reading {source.name}", unit="img", disable=not (progress and sys.stderr.isatty()), mininterval=1):
        if (where := _split_of(parts)) is not None:
            items.append((where, data))
            paths.append(parts)
    if not items:
        raise DataNotFoundError(f"{source} holds no images in class sub-folders (class/NAME.jpg or train|test/class/NAME.jpg)")
    has_split_folders = any(where[0] != "all" for where, _ in items)
    stray = next((parts for parts, (where, _) in zip(paths, items) if where[0] == "all"), None)
    if has_split_folders and stray is not None:  # pooling them would silently ignore the user's train/test split
        raise DataNotFoundError(f"{source}: {'/'.join(stray)} is outside train/CLASS/ and test/CLASS/ (a val/ folder, or a "
                                "deeper sub-folder); with train/ and test/ folders every image must sit directly in one")
    items.sort(key=lambda it: it[0])
    classes = sorted({w[1] for w, _ in items})
    if len(classes) < 2:  # a 1-output classifier reaches 100% and learns nothing
        raise BadDataError(f"{source}: {len(classes)} class ({', '.join(classes)}); a classifier needs at least two class "
                           "sub-folders (class/NAME.jpg, or train/class/ and test/class/)")
    class_index = {c: i for i, c in enumerate(classes)}
    arrays, labels, splits = [], [], []
    for (split, cls, name), data in tqdm(items, desc="decoding", unit="img", disable=not (progress and sys.stderr.isatty()), mininterval=1):
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("RGB")
                if image_size:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise DataNotFoundError(f"{source}: {split}/{cls}/{name} is not a readable image ({exc}); remove it") from None
        if arrays and arr.shape != arrays[0].shape:
            raise DataNotFoundError(f"{source}: image {split}/{cls}/{name} is {arr.shape[:2]}, others {arrays[0].shape[:2]}; set data.options.image_size to resize")
        arrays.append(arr)
        labels.append(class_index[cls])
        splits.append(split)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels_t = torch.tensor(labels, dtype=torch.int64)
    split_names = np.array(splits)
    if "all" in split_names:
        # No train/test folders: carve a fixed test split (seeded, so it never changes between runs).
        perm = torch.randperm(len(labels_t), generator=torch.Generator().manual_seed(0))
        n_test = max(1, int(round(len(perm) * test_fraction)))
        test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    else:
        train_idx = torch.from_numpy(np.nonzero(split_names == "train")[0])
        test_idx = torch.from_numpy(np.nonzero(split_names == "test")[0])
    return {"format": CACHE_FORMAT, "classes": classes,
            "train_images": images[train_idx], "train_labels": labels_t[train_idx],
            "test_images": images[test_idx], "test_labels": labels_t[test_idx]}


def channel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 NCHW images, in [0, 1], summed chunk by chunk in float64:
    a float copy of a whole large image set would need gigabytes."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = ((squares / count - mean.square()) * count / max(1, count - 1)).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def load_image_folder(source: Path, cache_dir: Path, name: str, options: dict, statistics: bool = True) -> ImageDataset:
    """Decode `source` (folder or archive) into a cached uint8 tensor file, keyed by its content, and load it; the
    channel statistics (unless not wanted) are computed once and kept beside the cache."""
    image_size = options.get("image_size")
    test_fraction = float(options.get("test_fraction", 0.1))
    key = hashlib.sha256(f"{content_fingerprint(source)}:{image_size}:{test_fraction}:{CACHE_FORMAT}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() / f"{name}-{key}.pt"
    if cache.exists():
        blob = load_tensors(cache)
    else:
        blob = decode_image_folder(source, image_size, test_fraction, progress=options.get("progress", True))
        save_torch_atomic(blob, cache)
    train = ImageSplit(blob["train_images"], blob["train_labels"])
    test = ImageSplit(blob["test_images"], blob["test_labels"])
    mean, std = _cached_statistics(cache, train) if statistics else ((0.5,) * 3, (0.25,) * 3)
    return ImageDataset(name, train, test, tuple(blob["classes"]), mean, std, source=str(source), extra={"cache": str(cache)})


def _cached_statistics(cache: Path, train: ImageSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel mean and std of the training images, from a file beside the cache (they cost seconds on 50k images)."""
    path = cache.with_suffix(".stats.json")
    try:
        saved = json.loads(path.read_text())
        return tuple(saved["mean"]), tuple(saved["std"])
    except (OSError, ValueError, KeyError):
        pass
    mean, std = channel_statistics(train.images) if len(train) else ((0.5,) * 3, (0.25,) * 3)
    write_atomic(path, json.dumps({"mean": mean, "std": std}).encode())
    return mean, std


@register_dataset("imagefolder", "Your images: class sub-folders (or train/ and test/ of them), a folder or .tar/.tar.xz; set data.path",
                  options=("image_size", "test_fraction"))
def load_user_image_folder(request: DatasetRequest) -> ImageDataset:
    """A user's image folder or archive given by data.path."""
    if request.path is None:
        raise DataNotFoundError("data.path must name the image folder or archive for dataset 'imagefolder'")
    source = Path(request.path).expanduser()
    if not source.exists():
        raise DataNotFoundError(f"data.path {source} does not exist")
    return load_image_folder(source, request.cache_dir, "imagefolder", request.options)


@register_dataset("cifar10_jpeg", "CIFAR-10 (JPEG copy, cifar10-jpeg.tar.xz, sha256-checked; 50k train, 10k test)",
                  options=("image_size",), files=(CIFAR10_JPEG_ARCHIVE,))
def load_cifar10_jpeg(request: DatasetRequest) -> ImageDataset:
    """The CIFAR-10 JPEG re-encoding: lossy, so figures from it say 'CIFAR-10 (JPEG copy)'."""
    archive = Path(request.path).expanduser() if request.path else fetch(
        CIFAR10_JPEG_ARCHIVE, request.roots, None, CIFAR10_JPEG_SHA256, request.download,
        how_to_get="it is the project's JPEG copy of CIFAR-10, which cannot be downloaded: copy it from a machine that has "
                   "it (the project's shared/datasets folder), or use dataset 'cifar10', which can")
    # Normalised with the canonical CIFAR-10 statistics (so checkpoints move between the two copies): none computed.
    data = load_image_folder(archive, request.cache_dir, "cifar10_jpeg", request.options, statistics=False)
    return ImageDataset("cifar10_jpeg", data.train, data.test, data.classes, CIFAR10_MEAN, CIFAR10_STD, source=data.source, extra=data.extra)
