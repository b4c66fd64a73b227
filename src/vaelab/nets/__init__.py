"""Encoders and decoders, one module per architecture family.

Every encoder maps images [B, C, H, W] to [B, 2 * latent_dim + extra_outputs] (the mean and
raw log-variance of q(z|x), then what a flow posterior reads as its context); every decoder
maps latents [B, latent_dim] to likelihood parameters [B, out_channels, H, W].

Conditional models (``model.conditional=true``) give both a one-hot label y [B, cond_dim]: the
encoder's output layer sees [features(x), y], the decoder's input is [z, y]. With
``model.decoder.condition_every_layer=true`` every layer of the decoder that maps its input to a new
width (each linear and (transposed) convolution, not the residual blocks) sees [h, y], y broadcast
over the image as extra channels: the label then reaches every level of the decoder, not only its
input, where a rich z can drown it.
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
    """[features, y] for a conditional net (y one-hot [B, cond_dim]), the features alone otherwise;
    for feature maps [B, C, H, W], y joins as cond_dim constant channels."""
    if y is None:
        return features
    y = y.to(features.dtype)
    if features.dim() == 4:
        y = y[:, :, None, None].expand(-1, -1, *features.shape[2:])
    return torch.cat([features, y], dim=1)


class ConditionedSequential(nn.Sequential):
    """Layers applied in turn, each layer at a position in ``conditioned`` seeing [h, y]
    (``with_condition``) instead of h; with y None, a plain ``nn.Sequential``."""

    def __init__(self, *layers: nn.Module, conditioned: Sequence[int] = ()):
        super().__init__(*layers)
        self.conditioned = frozenset(conditioned)

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for i, layer in enumerate(self):
            h = layer(with_condition(h, y) if i in self.conditioned else h)
        return h


def conditioned_layers(layers: Sequence[nn.Module], every_layer: bool) -> list[int]:
    """The positions that see the label: the first layer, or with ``every_layer`` each linear and
    (transposed) convolution."""
    if not every_layer:
        return [0]
    return [i for i, layer in enumerate(layers) if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
