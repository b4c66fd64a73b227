"""Epoch means of the loss terms, accumulated on the device.

Updating is a few tensor additions with no host synchronization (torchmetrics' NaN check,
which would read a value back every step, is disabled); the per-image mean over the epoch is
read once, at epoch end, and under DDP reduced across processes as sums and counts, so it is
the exact mean over all images whatever the shard sizes.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanMetric


class TermMeans(nn.Module):
    """One running, batch-size-weighted mean per named term."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.means = nn.ModuleDict({name: MeanMetric(nan_strategy="disable") for name in names})

    def update(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in values.items():
            self.means[name].update(value.detach(), batch_size)

    def compute_and_reset(self, prefix: str) -> dict[str, torch.Tensor]:
        """{prefix/name: epoch mean}; every process must call this (it is a collective under DDP)."""
        out = {f"{prefix}/{name}": mean.compute() for name, mean in self.means.items() if mean.update_count}
        for mean in self.means.values():
            mean.reset()
        return out
