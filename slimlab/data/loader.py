"""Batches on the training device: seeded order, whole-batch crop/flip augmentation and normalization."""
from __future__ import annotations

import torch

from slimlab.data import ImageSplit
from slimlab.errors import ConfigError


def split_validation(train: ImageSplit, val_size: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Carve a fixed validation split from the training set (seeded; the test set is never touched)."""
    if val_size <= 0:
        return train, ImageSplit(train.images[:0], train.labels[:0])
    if val_size >= len(train):
        raise ConfigError(f"data.val_size={val_size} leaves no training images (the training set has {len(train)}); "
                          "set a smaller data.val_size, or 0")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[val_size:].sort().values), train.subset(perm[:val_size].sort().values)


def balanced_subset(split: ImageSplit, size: int, seed: int = 0) -> ImageSplit:
    """`size` images drawn at random with the classes as even as the split allows, kept in their original order.

    Never the first `size`: many datasets (image folders, the CIFAR-10 JPEG copy) are stored sorted by class, where
    the first images are all one class."""
    if size >= len(split):
        return split
    labels = split.labels
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    # Rank of each shuffled image among those of its class; taking ranks 0, 1, 2, ... deals the classes out evenly.
    by_class = torch.sort(shuffled, stable=True).indices
    counts = torch.bincount(shuffled)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(perm)
    rank[by_class] = torch.arange(len(labels)) - class_start[shuffled[by_class]]
    take = torch.sort(rank * len(labels) + torch.arange(len(labels))).indices[:size]
    return split.subset(perm[take].sort().values)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range coordinates back inside [0, size) without repeating the edge pixel, as 'reflect' padding does."""
    return (size - 1) - ((size - 1) - index.abs()).abs()


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool | torch.Tensor, generator: torch.Generator,
                     padding_mode: str = "zeros") -> torch.Tensor:
    """Padded random crop and horizontal flip of a whole uint8 batch with one gather, no per-image Python.
    `padding_mode` 'zeros' fills the border with black, 'reflect' mirrors the image into it.
    `flip` True tosses a coin per image; a bool tensor flips exactly the images it marks."""
    n, c, h, w = images.shape
    device = images.device
    out = images
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        if padding_mode == "reflect":
            source, rows, cols = images, _reflect(rows - padding, h), _reflect(cols - padding, w)
        else:
            source = torch.nn.functional.pad(images, (padding,) * 4)
        out = source[torch.arange(n, device=device)[:, None, None, None], torch.arange(c, device=device)[None, :, None, None], rows, cols]
    if isinstance(flip, torch.Tensor):
        out = torch.where(flip.to(device)[:, None, None, None], out.flip(3), out)
    elif flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(device)[:, None, None, None]
        out = torch.where(mask, out.flip(3), out)
    return out


class DeviceLoader:
    """Iterates (float images, labels) batches; the order and augmentation are functions of (seed, epoch)."""

    def __init__(self, split: ImageSplit, batch_size: int, mean, std, *, device="cpu", shuffle=False,
                 augment=False, crop_padding=4, flip=True, alternate_flips=False, seed=0, drop_last=False,
                 channels_last=False, padding_mode="zeros"):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle, self.augment, self.crop_padding, self.flip = shuffle, augment, crop_padding, flip
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        if crop_padding >= min(split.images.shape[-2:]) and padding_mode == "reflect":
            raise ConfigError(f"data.crop_padding={crop_padding} must be smaller than the images ({split.images.shape[-1]} px) "
                              "for reflect padding")
        self.padding_mode = padding_mode
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, -1, 1, 1) * 255)
        self.epoch, self.crop_this_epoch = 0, True
        # Alternating flips: image i is mirrored in epochs where (epoch + phase[i]) is odd. The phases come from a
        # generator of their own, so the order and crops are drawn exactly as without alternating flips.
        self.flip_phase = (torch.randint(0, 2, (len(self.labels),), generator=torch.Generator().manual_seed(seed + 7919)).bool()
                           .to(device) if alternate_flips and flip else None)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, crop: bool = True) -> None:
        """Order and augmentation of the next pass; `crop=False` skips the crop for it (flips stay)."""
        self.epoch, self.crop_this_epoch = epoch, crop

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = (images_u8.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator).to(self.device) if self.shuffle else None
        for b in range(len(self)):
            idx = slice(b * self.batch_size, min(n, (b + 1) * self.batch_size))
            sel = order[idx] if order is not None else idx
            images, labels = self.images[sel], self.labels[sel]
            if self.augment:
                flip = self.flip if self.flip_phase is None else self.flip_phase[sel] ^ bool(self.epoch % 2)
                images = random_crop_flip(images, self.crop_padding if self.crop_this_epoch else 0, flip, generator, self.padding_mode)
            yield self.normalize(images), labels
