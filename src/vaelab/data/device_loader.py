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

    Semi-supervised batches (the M2 model of Kingma et al. 2014): with ``labelled`` (indices into
    ``images`` of the images whose labels are known) each batch of ``batch_size`` images, served
    with label -1 ("unknown"), is followed by ``labelled_batch_size`` images of the labelled
    subset with their true labels, so a batch is (x [B + L, ...], y [B + L]) with y = -1 in the
    first B rows. The labelled part does not change the number of batches. Within an epoch it is
    read from a stream of passes over the labelled subset, each pass a permutation drawn from a
    generator seeded with (seed, epoch, pass, rank): no image repeats within a pass, batch b takes
    positions [b L, (b + 1) L) of that stream, and so the labelled part of a batch depends on its
    epoch and index alone (the same in a rerun and after a mid-epoch resume). Under DDP every
    process draws its own labelled part (the rank is in the seed) of ``labelled_batch_size``
    images: that size is per process, unlike the global batch size of the datamodule.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1, even_shards: bool = False,
                 current_epoch: Callable[[], int] = lambda: 0, binarize: bool = False,
                 batches_done: Callable[[], int] = lambda: 0, labelled: torch.Tensor | None = None,
                 labelled_batch_size: int = 0):
        if labelled is not None and (len(labelled) == 0 or labelled_batch_size < 1):
            raise ValueError(f"a labelled part needs labelled images and labelled_batch_size >= 1, "
                             f"got {len(labelled)} images and {labelled_batch_size}")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.even_shards = even_shards
        self.current_epoch = current_epoch
        self.binarize = binarize
        self.batches_done = batches_done
        self.labelled = labelled
        self.labelled_batch_size = labelled_batch_size
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
        generator.manual_seed(_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + self.rank))
        return torch.bernoulli(x, generator=generator)

    def _labelled_pass(self, epoch: int, index: int) -> torch.Tensor:
        """Pass ``index`` of this epoch over the labelled subset: a permutation of its positions."""
        device = self.labelled.device
        generator = torch.Generator(device=device)
        mixed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + index) * 1_009 + self.rank
        generator.manual_seed(_seed(mixed * 7 + 3))  # * 7 + 3: not the seed of a batch's binarization draws
        return torch.randperm(len(self.labelled), generator=generator, device=device)

    def _labelled_part(self, epoch: int, batch: int, passes: dict[int, torch.Tensor]) -> torch.Tensor:
        """Indices into ``images`` of the labelled part of a batch: positions [b L, (b + 1) L) of the
        epoch's stream of passes (``passes`` caches the permutations drawn so far in this iteration)."""
        m, size = len(self.labelled), self.labelled_batch_size
        start, stop = batch * size, (batch + 1) * size
        for old in [p for p in passes if p < start // m]:
            del passes[old]
        parts = []
        for index in range(start // m, (stop - 1) // m + 1):
            if index not in passes:
                passes[index] = self._labelled_pass(epoch, index)
            parts.append(passes[index][max(start - index * m, 0) : min(stop - index * m, m)])
        return self.labelled[torch.cat(parts)]

    def __iter__(self):
        epoch = self.current_epoch()
        order = self._order(epoch)
        passes: dict[int, torch.Tensor] = {}
        for batch in range(self._first_batch(epoch), len(self)):
            idx = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            y = self.labels[idx]
            if self.labelled is not None:
                extra = self._labelled_part(epoch, batch, passes)
                idx = torch.cat([idx, extra])
                y = torch.cat([torch.full_like(y, -1), self.labels[extra]])
            x = self.images[idx].float().div_(255.0)
            yield (self._binarized(x, epoch, batch) if self.binarize else x), y


def _seed(value: int) -> int:
    """A generator seed from a mixed integer: torch takes 64 bits (a negative seed as its two's
    complement, so this changes no seed that torch accepts as it is)."""
    return value % (1 << 64)
