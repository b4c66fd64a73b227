"""A deeper residual convolutional encoder/decoder.

Each stage halves (encoder) or doubles (decoder) the resolution and holds
``blocks`` pre-activation residual blocks x + conv(act(conv(act(x)))). No batch
normalization: its batch statistics would make the validation objective differ
from the training one.
"""

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


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetEncoder(nn.Module):
    def __init__(self, shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (64, 128), blocks: int = 2,
                 extra_outputs: int = 0, cond_dim: int = 0):
        super().__init__()
        factor = 2 ** len(channels)
        c, h, w = checked_shape(shape, latent_dim, factor, "resnet")
        layers: list[nn.Module] = [ShapeCheck(shape)]
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            layers += [ResidualBlock(c_out) for _ in range(blocks)]
        flat = channels[-1] * (h // factor) * (w // factor)
        layers += [nn.SiLU(), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(flat + cond_dim, 2 * latent_dim + extra_outputs)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(with_condition(self.body(x), y))


class ResNetDecoder(nn.Module):
    def __init__(self, shape: Sequence[int], latent_dim: int, out_channels: int,
                 channels: Sequence[int] = (64, 128), blocks: int = 2, cond_dim: int = 0,
                 condition_every_layer: bool = False):
        super().__init__()
        factor = 2 ** len(channels)
        _, h, w = checked_shape(shape, latent_dim, factor, "resnet")
        top = (channels[-1], h // factor, w // factor)
        extra = cond_dim if condition_every_layer else 0  # the label's channels at the convolutions' inputs
        layers: list[nn.Module] = [nn.Linear(latent_dim + cond_dim, top[0] * top[1] * top[2]), nn.Unflatten(1, top)]
        widths = list(reversed(channels))
        for c_in, c_out in zip(widths, [*widths[1:], widths[-1]], strict=True):
            layers += [ResidualBlock(c_in) for _ in range(blocks)]
            layers += [nn.SiLU(), nn.ConvTranspose2d(c_in + extra, c_out, 4, stride=2, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1] + extra, out_channels, 3, padding=1)]
        self.net = ConditionedSequential(*layers, conditioned=conditioned_layers(layers, condition_every_layer))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z, y)
