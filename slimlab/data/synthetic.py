"""A synthetic, learnable image dataset for tests: class = which quadrant is bright, plus noise."""
from __future__ import annotations

import torch

from slimlab.data import DatasetRequest, ImageDataset, ImageSplit, register_dataset


def make_synthetic(n: int, num_classes: int, size: int, channels: int, seed: int, sorted_by_class: bool = False) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    if sorted_by_class:  # stored class by class, as image folders and the CIFAR-10 JPEG copy are
        labels = labels.sort().values
    images = torch.randint(0, 96, (n, channels, size, size), generator=g).float()
    # Each class brightens its own horizontal band, so a small model learns it in a few steps.
    band = max(1, size // num_classes)
    for c in range(num_classes):
        rows = slice(c * band % size, c * band % size + band)
        images[labels == c, :, rows, :] += 140
    return ImageSplit(images.clamp(0, 255).to(torch.uint8), labels)


@register_dataset("synthetic", "Synthetic bands (options: train_size, test_size, num_classes, size, channels, "
                  "sorted_by_class); for tests", options=("train_size", "test_size", "num_classes", "size", "channels", "sorted_by_class"))
def load_synthetic(request: DatasetRequest) -> ImageDataset:
    """Generated in memory; no files."""
    o = {"train_size": 512, "test_size": 256, "num_classes": 10, "size": 32, "channels": 3, "sorted_by_class": False, **request.options}
    shape = (o["num_classes"], o["size"], o["channels"])
    train = make_synthetic(o["train_size"], *shape, seed=1, sorted_by_class=o["sorted_by_class"])
    test = make_synthetic(o["test_size"], *shape, seed=2, sorted_by_class=o["sorted_by_class"])
    classes = tuple(f"class{i}" for i in range(o["num_classes"]))
    return ImageDataset("synthetic", train, test, classes, (0.3,) * o["channels"], (0.25,) * o["channels"], source="generated")
