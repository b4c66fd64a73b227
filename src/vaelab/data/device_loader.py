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
    binarization), from a generator seeded with (seed, epoch, batch, rank), not from the global
    random state.

    It is resumable mid-epoch: Lightning stores ``state_dict()`` (the epoch and
    ``batches_done()``, the number of batches the trainer has finished) in every checkpoint and
    hands it back through ``load_state_dict`` on resume; the next iteration over that epoch then
    starts at the first batch not yet trained on, with the same order and the same binarization
    draws as the uninterrupted run.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, even_shards: bool = False,
                 current_epoch: Callable[[], int] = lambda: 0, binarize: bool = False,
                 batches_done: Callable[[], int] = lambda: 0):
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.even_shards = even_shards
        self.current_epoch = current_epoch
        self.binarize = binarize
        self.batches_done = batches_done
        self._resume_at: dict[str, int] | None = None

    def _shard_size(self) -> int:
        n = len(self.labels)
        if self.even_shards:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self._shard_size() / self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        n, device = len(self.labels), self.images.device
        if self.shuffle:
            generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.arange(n, device=device)
        if self.even_shards:
            padded = math.ceil(n / self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - n]])
        return order[self.rank :: self.world_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.current_epoch(), "batches_done": self.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = dict(state)

    def _first_batch(self, epoch: int) -> int:
        """0, or on the first iteration after a mid-epoch resume, the batches of this epoch already trained on."""
        resume, self._resume_at = self._resume_at, None
        return resume["batches_done"] if resume is not None and resume["epoch"] == epoch else 0

    def _binarized(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + self.rank)
        return torch.bernoulli(x, generator=generator)

    def __iter__(self):
        epoch = self.current_epoch()
        order = self._order(epoch)
        for batch in range(self._first_batch(epoch), len(self)):
            idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            x = self.images[idx].float().div_(255.0)
            yield (self._binarized(x, epoch, batch) if self.binarize else x), self.labels[idx]
