"""Fully connected encoder/decoder: the classic 784-400-20 VAE of Kingma & Welling (2014)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from vaelab.nets import (
    ConditionedSequential,
    ShapeCheck,
    checked_shape,
    conditioned_layers,
    with_condition,
)


def _mlp(sizes: Sequence[int]) -> list[nn.Module]:
    """Linear layers with ReLU between them and after the last one."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return layers


class MLPEncoder(nn.Module):
    def __init__(self, shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (400,),
                 extra_outputs: int = 0, cond_dim: int = 0):
        super().__init__()
        c, h, w = checked_shape(shape, latent_dim)
        sizes = [c * h * w, *hidden]
        self.body = nn.Sequential(ShapeCheck(shape), nn.Flatten(), *_mlp(sizes))
        self.head = nn.Linear(sizes[-1] + cond_dim, 2 * latent_dim + extra_outputs)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(with_condition(self.body(x), y))


class MLPDecoder(nn.Module):
    def __init__(self, shape: Sequence[int], latent_dim: int, out_channels: int, hidden: Sequence[int] = (400,),
                 cond_dim: int = 0, condition_every_layer: bool = False):
        super().__init__()
        _, h, w = checked_shape(shape, latent_dim)
        sizes = [latent_dim, *hidden, out_channels * h * w]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(pairwise(sizes)):
            layers.append(nn.Linear(n_in + (cond_dim if i == 0 or condition_every_layer else 0), n_out))
            layers.append(nn.ReLU() if i < len(hidden) else nn.Unflatten(1, (out_channels, h, w)))
        self.net = ConditionedSequential(*layers, conditioned=conditioned_layers(layers, condition_every_layer))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, y)


class MLPClassifier(nn.Module):
    """Logits [B, num_classes] of q(y|x): the classifier of the semi-supervised M2 model."""

    def __init__(self, shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (500,)):
        super().__init__()
        c, h, w = checked_shape(shape, 1)
        sizes = [c * h * w, *hidden]
        self.net = nn.Sequential(ShapeCheck(shape), nn.Flatten(), *_mlp(sizes), nn.Linear(sizes[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
