"""Batches served straight from a split held as one uint8 tensor on the training device.

A DataLoader indexes one sample at a time (even over a CUDA TensorDataset) and copies every
batch to the device; here each batch is one gather on the device followed by the conversion to
float intensities in [0, 1] there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class DeviceBatches:
    """Shuffled (or ordered) batches of ``images`` [N, C, H, W] uint8 and ``labels`` [N].

    The order of epoch e (``current_epoch()``, the trainer's epoch counter) comes from a
    generator seeded with (seed, e) alone, so it is the same in every run with that seed,
    resumed or not. Under DDP each of the ``world_size`` processes
    takes every world_size-th index of that order (``rank`` first). With ``even_shards`` the
    order is first padded by repeating its start, as torch's DistributedSampler does, so every
    process gets the same number of batches (needed for training, where each step synchronizes
    gradients); evaluation leaves shards uneven so that no image counts twice. With
    ``binarize`` each pixel of each batch is drawn afresh as Bernoulli(intensity) (dynamic
    binarization).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, even_shards: bool = False,
                 current_epoch: Callable[[], int] = lambda: 0, binarize: bool = False):
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.even_shards = even_shards
        self.current_epoch = current_epoch
        self.binarize = binarize

    def _shard_size(self) -> int:
        n = len(self.labels)
        if self.even_shards:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def _order(self) -> torch.Tensor:
        n, device = len(self.labels), self.images.device
        if self.shuffle:
            generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + self.current_epoch())
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.arange(n, device=device)
        if self.even_shards:
            padded = math.ceil(n / self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - n]])
        return order[self.rank :: self.world_size]

    def __iter__(self):
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx].float().div_(255.0)
            yield (torch.bernoulli(x) if self.binarize else x), self.labels[idx]
