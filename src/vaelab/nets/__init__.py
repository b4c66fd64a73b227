"""Encoders and decoders, one module per architecture family.

Every encoder maps images [B, C, H, W] to [B, 2 * latent_dim + extra_outputs] (the mean and
raw log-variance of q(z|x), then what a flow posterior reads as its context); every decoder
maps latents [B, latent_dim] to likelihood parameters [B, out_channels, H, W].

Conditional models (``model.conditional=true``) give both a one-hot label y [B, cond_dim]: the
encoder's output layer sees [features(x), y], the decoder's input is [z, y].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vaelab.errors import ConfigError


def checked_shape(shape: Sequence[int], latent_dim: int, min_downsample: int = 1,
                  model: str = "") -> tuple[int, int, int]:
    """Validate (C, H, W) and latent_dim for a net (of the config ``model=<model>``) that halves H and
    W log2(min_downsample) times: H and W must be multiples of min_downsample."""
    if int(latent_dim) < 1:
        raise ConfigError(f"model.latent_dim must be >= 1, got {latent_dim}: pass model.latent_dim=<positive integer>")
    if len(shape) != 3:
        raise ConfigError(f"data.shape must be [channels, height, width], got {list(shape)}")
    c, h, w = (int(s) for s in shape)
    f = min_downsample
    if h % f or w % f:
        near = sorted({max(f, s // f * f) for s in (h, w)} | {-(-s // f) * f for s in (h, w)})
        raise ConfigError(
            f"model={model} cannot take {h}x{w} images: its {f.bit_length() - 1} stride-2 stages need a height and "
            f"width divisible by {f} (the nearest: {', '.join(map(str, near))} px): resize the images "
            f"(data.image_size=... for your own) or use model=mlp or model=hierarchical, which take any size"
        )
    return c, h, w


class ShapeCheck(nn.Module):
    """Stops a forward pass with a clear message when images do not have the shape the net was built for."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ConfigError(
                f"the encoder was built for images of shape {list(self.shape)} but got {list(x.shape[1:])}: "
                "make data.shape match the dataset (use the data= config group)"
            )
        return x


def with_condition(features: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """[features, y] for a conditional net (y one-hot [B, cond_dim]), the features alone otherwise."""
    return features if y is None else torch.cat([features, y.to(features.dtype)], dim=-1)
