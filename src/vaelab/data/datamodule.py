"""LightningDataModule for small image datasets held in memory as uint8 tensors.

Batches are gathered with one tensor index per batch (the dataset implements
``__getitems__``) instead of one PIL image per sample, and converted to float
intensities in [0, 1] on the fly.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vaelab.data.sources import Split, load_dataset
from vaelab.errors import ConfigError, DataError


class TensorImages(Dataset):
    """Images (uint8 [N, C, H, W]) and labels served as (float images in [0, 1], labels) batches."""

    def __init__(self, split: Split):
        self.images = split.images
        self.labels = split.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx].float().div_(255.0), self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


def _already_batched(batch):
    """collate_fn for TensorImages: ``__getitems__`` already returns a whole batch."""
    return batch


class ImageDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or CIFAR-10: a deterministic train/val split of the official
    training set (``val_size`` images, chosen by ``split_seed``) and the official test set.

    ``batch_size`` is the global batch: under DDP each of the W processes gets
    ``batch_size / W`` images per step (it must divide evenly).
    """

    def __init__(self, name: str, shape: Sequence[int], root: str, mirror: str | None = None,
                 extra_mirrors: Sequence[str] = (), download: bool = True, val_size: int = 5000,
                 split_seed: int = 0, batch_size: int = 128, eval_batch_size: int | None = None,
                 num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {val_size}")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.root = root
        self.mirrors = [mirror, *extra_mirrors]
        self.download = download
        self.val_size = val_size
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set = self.val_set = self.test_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        data = load_dataset(self.name, self.root, self.mirrors, self.download)
        if tuple(data.train.images.shape[1:]) != self.shape:
            raise DataError(
                f"{self.name} images have shape {list(data.train.images.shape[1:])} but data.shape is {list(self.shape)}"
            )
        n = len(data.train.labels)
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} leaves no training images (the training set has {n})")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = order[: self.val_size].sort().values, order[self.val_size :].sort().values
        self.train_set = TensorImages(Split(data.train.images[train_idx], data.train.labels[train_idx]))
        self.val_set = TensorImages(Split(data.train.images[val_idx], data.train.labels[val_idx])) if self.val_size else None
        self.test_set = TensorImages(data.test)

    @property
    def has_validation(self) -> bool:
        return self.val_size > 0

    def per_device_batch_size(self, batch_size: int) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if batch_size % world:
            raise ConfigError(
                f"data.batch_size={batch_size} does not divide across {world} processes: "
                f"use a multiple of {world} (the batch size is global)"
            )
        return batch_size // world

    def _loader(self, dataset: TensorImages, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.per_device_batch_size(batch_size), shuffle=shuffle,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=_already_batched,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def examples(self, n: int, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images (float [0, 1]) and labels of a split; the test set stands in when there is no val split."""
        dataset = self.val_set if split == "val" and self.val_set is not None else self.test_set
        return dataset.__getitems__(range(min(n, len(dataset))))
