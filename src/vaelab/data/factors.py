"""Ground-truth factors: images looked up by the factors that generated them.

A ``FactorData`` holds every image of a full factor grid (all combinations of K discrete factors,
stored in mixed-radix order, the last factor varying fastest, as dSprites is) and is what the
disentanglement metrics sample from (``vaelab.disentanglement``): ``sample_factors`` draws factor
classes uniformly and independently, ``images_for`` returns the images of given factor classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vaelab.data.packed import PackedImages


class FactorData:
    """``names`` and ``values`` (the value of each class) of K factors, and ``images``, the grid's
    images in mixed-radix order of ``factor_sizes``.

    ``random_colour`` (colour dSprites, as disentanglement_lib's ColorDSprites): every image handed
    out gets a colour drawn afresh, uniform in [0.5, 1] per RGB channel, a nuisance that is no factor."""

    def __init__(self, names: Sequence[str], values: Sequence[np.ndarray], images: PackedImages,
                 random_colour: bool = False):
        if len(names) != len(values):
            raise ValueError(f"{len(names)} factor names but {len(values)} value arrays")
        self.names = tuple(names)
        self.values = tuple(np.asarray(v) for v in values)
        self.factor_sizes = tuple(len(v) for v in self.values)
        if len(images) != int(np.prod(self.factor_sizes)):
            raise ValueError(f"a grid of {self.factor_sizes} has {int(np.prod(self.factor_sizes))} images, "
                             f"got {len(images)}")
        self.images = images
        self.random_colour = random_colour

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (3 if self.random_colour else c), h, w

    def to(self, device) -> FactorData:
        return FactorData(self.names, self.values, self.images.to(device), self.random_colour)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n factor vectors, int64 [n, K], each factor's class uniform over its values."""
        return np.stack([rng.integers(size, size=n) for size in self.factor_sizes], axis=1)

    def index_of(self, factors: np.ndarray) -> np.ndarray:
        """The grid position of each factor vector [n, K] -> [n]."""
        return np.ravel_multi_index(tuple(np.asarray(factors).T), self.factor_sizes)

    def images_for(self, factors: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """The images of factor vectors [n, K]: float [n, C, H, W] in [0, 1], on the images' device
        (``rng`` draws the colours of ``random_colour``)."""
        index = torch.from_numpy(self.index_of(factors)).to(self.images.device)
        chosen = self.images[index]
        if not self.random_colour:
            return chosen.float().div_(255.0)
        colours = torch.from_numpy(rng.uniform(0.5, 1.0, size=(len(index), 3))).float().to(self.images.device)
        return chosen.mask().float() * colours[:, :, None, None]
