"""Convolutional encoder/decoder: stride-2 4x4 convolutions, for 28x28x1 and 32x32x3 images alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vaelab.nets import (
    ConditionedSequential,
    ShapeCheck,
    checked_shape,
    conditioned_layers,
    with_condition,
)


class ConvEncoder(nn.Module):
    """len(channels) stride-2 convolutions, a hidden linear layer, then the output layer."""

    def __init__(self, shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64), hidden: int = 256,
                 extra_outputs: int = 0, cond_dim: int = 0):
        super().__init__()
        factor = 2 ** len(channels)
        c, h, w = checked_shape(shape, latent_dim, factor, "conv")
        layers: list[nn.Module] = [ShapeCheck(shape)]
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        flat = channels[-1] * (h // factor) * (w // factor)
        layers += [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden + cond_dim, 2 * latent_dim + extra_outputs)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(with_condition(self.body(x), y))


class ConvDecoder(nn.Module):
    """The mirror image of ConvEncoder, with transposed convolutions."""

    def __init__(self, shape: Sequence[int], latent_dim: int, out_channels: int,
                 channels: Sequence[int] = (32, 64), hidden: int = 256, cond_dim: int = 0,
                 condition_every_layer: bool = False):
        super().__init__()
        factor = 2 ** len(channels)
        _, h, w = checked_shape(shape, latent_dim, factor, "conv")
        top = (channels[-1], h // factor, w // factor)
        extra = cond_dim if condition_every_layer else 0  # the label's width at the inputs after the first
        layers: list[nn.Module] = [
            nn.Linear(latent_dim + cond_dim, hidden), nn.ReLU(),
            nn.Linear(hidden + extra, top[0] * top[1] * top[2]), nn.ReLU(), nn.Unflatten(1, top),
        ]
        widths = list(reversed(channels))
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.ConvTranspose2d(c_in + extra, c_out, 4, stride=2, padding=1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(widths[-1] + extra, out_channels, 4, stride=2, padding=1))
        self.net = ConditionedSequential(*layers, conditioned=conditioned_layers(layers, condition_every_layer))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, y)
