"""The data side of an experiment, ready for training and measurement: the splits, their device, and loaders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from slimlab.data import ImageDataset, ImageSplit
from slimlab.data.loader import DeviceLoader

if TYPE_CHECKING:
    from slimlab.config import ExperimentConfig


@dataclass
class Prepared:
    """The data side of an experiment, ready for training and measurement."""

    dataset: ImageDataset
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    device: torch.device

    def loader(self, split: ImageSplit, batch_size: int, config: ExperimentConfig, training: bool = False,
               shuffle: bool | None = None) -> DeviceLoader:
        """Training loaders shuffle and augment. Others keep the stored order unless `shuffle`: a loader whose first
        batches serve as a sample must shuffle, since stored order is often sorted by class."""
        return DeviceLoader(split, batch_size, self.dataset.mean, self.dataset.std, device=self.device,
                            shuffle=training if shuffle is None else shuffle,
                            augment=training, crop_padding=config.data.crop_padding, flip=config.data.flip,
                            alternate_flips=config.data.alternate_flips, seed=config.seed, padding_mode=config.data.crop_padding_mode,
                            drop_last=training, channels_last=config.train.channels_last and split.images.shape[1] > 1)
