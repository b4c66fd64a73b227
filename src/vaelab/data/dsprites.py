"""dSprites (Matthey et al. 2017) re-rendered: the factor grid of DeepMind's file, drawn here.

The 737,280 images are every combination of 5 ground-truth factors, stored in DeepMind's order
(the last factor varies fastest), with the same factor values (``FACTOR_VALUES``):

    shape        3   square, ellipse, heart (values 1, 2, 3)
    scale        6   linspace(0.5, 1, 6)
    orientation 40   linspace(0, 2 pi, 40) (the first and last are the same angle, as in the original)
    pos_x       32   linspace(0, 1, 32)
    pos_y       32   linspace(0, 1, 32)

DeepMind's file (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``) cannot be downloaded here, so
the images are rendered procedurally: the same grid drawn by ``render_grid``, not DeepMind's
pixels. The drawing follows the original's conventions as far as they are known: binary 64x64
images, the sprite's centre moving one pixel per position step (the original's "smallest step
that changes every image") from 16 to 47 px along x (columns, rightwards) and y (rows, downwards),
rotation about the sprite's centroid by the orientation angle in (x right, y down) coordinates
(clockwise as displayed), and every shape turned through the whole [0, 2 pi]: the square looks
the same every pi/2 and the ellipse every pi, so their orientation is not identifiable from the
image, as in the original. Sizes at scale s, in pixels: the square is 16 s wide, the ellipse
19.2 s x 9.6 s (long axis along x at orientation 0), the heart (the curve
(x^2 + y^2 - 1)^3 = x^2 y^3, point down) 16 s wide. A pixel is on when at least half of its 4x4
sub-pixel samples fall inside the shape.

A user's copy of DeepMind's file at ``<data.root>/dsprites/`` is read instead (its images and
``latents_classes``; the ``metadata`` pickle is never loaded); otherwise the rendering is built
once (about 4 s on one CPU core) and cached there as packed bits (``np.packbits``, 377 MB),
written atomically.
"""

from __future__ import annotations

import logging
import math
from functools import cache
from pathlib import Path

import numpy as np
import torch

from vaelab.data.factors import FactorData
from vaelab.data.packed import PackedImages
from vaelab.data.sources import Dataset, Split
from vaelab.errors import DataError
from vaelab.files import atomic_file

log = logging.getLogger(__name__)

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
FACTOR_VALUES = (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64
NUM_IMAGES = math.prod(FACTOR_SIZES)
DEEPMIND_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
CACHE_FILE = "dsprites_rendered_v1_packed.npy"  # bump the version when the drawing changes

HALF_SIZE = 8.0  # pixels per shape unit at scale 1: the square is 2 units wide
FIRST_CENTRE = 16  # pixel coordinate (a pixel corner) of the centre at position 0; +1 px per step
SUPERSAMPLE = 4  # sub-pixel samples per pixel along each axis
ELLIPSE_AXES = (1.2, 0.6)  # semi-axes in shape units
HEART_WIDTH = 2.0  # shape units


@cache
def _heart_frame() -> tuple[float, float]:
    """(scale, centroid height) of the heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3 (y up): the factor
    that makes it HEART_WIDTH wide, and the height of its area centroid (measured on a fine grid)."""
    t = np.linspace(-1.5, 1.5, 3001)
    x, y = np.meshgrid(t, t)
    inside = (x**2 + y**2 - 1) ** 3 <= x**2 * y**3
    return float(x[inside].max() - x[inside].min()) / HEART_WIDTH, float(y[inside].mean())


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u right, v down, in shape units about the centroid) lie in the shape."""
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= 1.0
    if shape == 1:
        a, b = ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    scale, centroid = _heart_frame()
    x, y = u * scale, centroid - v * scale
    return (x**2 + y**2 - 1) ** 3 <= x**2 * y**3


def render_sprite(shape: int, scale: float, angle: float, centre: tuple[float, float] = (FIRST_CENTRE,) * 2,
                  size: int = SIZE) -> np.ndarray:
    """One binary image bool [size, size]: the shape at ``scale``, rotated by ``angle``, its centroid
    at ``centre`` = (x, y) in pixel coordinates (pixel (r, c) covers [c, c + 1) x [r, r + 1))."""
    offsets = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    dx, dy = offsets[None, :] - centre[0], offsets[:, None] - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    unit = HALF_SIZE * scale
    u, v = (cos * dx + sin * dy) / unit, (cos * dy - sin * dx) / unit  # rotated back into the shape's frame
    covered = _inside(shape, u, v).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
    return covered >= 0.5


def render_grid() -> np.ndarray:
    """Every image of the grid, packed: uint8 [737280, 512], in DeepMind's order.

    Each of the 720 (shape, scale, orientation) sprites is drawn once at position (0, 0) and the
    32 x 32 positions are whole-pixel shifts of it (views of one padded canvas)."""
    shift = FACTOR_SIZES[3] - 1
    packed = np.empty((NUM_IMAGES, SIZE * SIZE // 8), dtype=np.uint8)
    per_sprite = FACTOR_SIZES[3] * FACTOR_SIZES[4]
    canvas = np.zeros((SIZE + shift, SIZE + shift), dtype=bool)
    window = 2 * FIRST_CENTRE  # the sprite at position 0 lies inside [0, 32)^2
    sprites = ((s, sc, a) for s in range(3) for sc in FACTOR_VALUES[1] for a in FACTOR_VALUES[2])
    for i, (shape, scale, angle) in enumerate(sprites):
        canvas[shift : shift + window, shift : shift + window] = render_sprite(shape, scale, angle, size=window)
        windows = np.lib.stride_tricks.sliding_window_view(canvas, (SIZE, SIZE))  # [a, b] = canvas[a:, b:]
        images = windows[::-1, ::-1].transpose(1, 0, 2, 3)  # [pos_x, pos_y]: shifted right by x, down by y
        packed[i * per_sprite : (i + 1) * per_sprite] = np.packbits(images, axis=-1).reshape(per_sprite, -1)
    return packed


def grid_classes(factor_sizes: tuple[int, ...] = FACTOR_SIZES) -> np.ndarray:
    """The factor classes of every grid image, int64 [N, K], in DeepMind's order (the last fastest)."""
    n = math.prod(factor_sizes)
    return np.stack(np.unravel_index(np.arange(n), factor_sizes), axis=1).astype(np.int64)


def read_deepmind(path: Path, factor_sizes: tuple[int, ...] = FACTOR_SIZES) -> np.ndarray:
    """DeepMind's file (``imgs`` 0/1 [N, 64, 64], ``latents_classes`` [N, 6], colour first) as packed
    bits [N, 512], after checking that it holds the grid of ``factor_sizes`` in its order."""
    n = math.prod(factor_sizes)
    try:
        with np.load(path) as z:
            images, classes = z["imgs"], z["latents_classes"]
    except Exception as err:  # zip CRC error, missing member, truncated file
        raise DataError(f"{path} is corrupt or truncated ({err}): download it again") from err
    if images.shape != (n, SIZE, SIZE) or classes.shape != (n, 1 + len(factor_sizes)):
        raise DataError(f"{path} holds images {list(images.shape)} and latents_classes {list(classes.shape)}, not "
                        f"[{n}, {SIZE}, {SIZE}] and [{n}, {1 + len(factor_sizes)}]: it is not DeepMind's dSprites file")
    if not np.array_equal(classes[:, 1:], grid_classes(factor_sizes)):
        raise DataError(f"{path}: latents_classes are not the dSprites grid in its order (colour, shape, scale, "
                        "orientation, pos_x, pos_y; the last fastest)")
    log.info("read DeepMind's dSprites from %s", path)
    return np.packbits(images.reshape(n, -1) != 0, axis=1)


def _read_cache(path: Path) -> np.ndarray:
    try:
        bits = np.load(path)
    except Exception as err:  # truncated or not an .npy file
        raise DataError(f"{path} is corrupt or truncated ({err}): delete it to render dSprites again") from err
    if bits.dtype != np.uint8 or bits.shape != (NUM_IMAGES, SIZE * SIZE // 8):
        raise DataError(f"{path} holds {bits.dtype} {list(bits.shape)}, not the packed dSprites grid: delete it "
                        "to render dSprites again")
    return bits


class DSpritesSource:
    """dSprites from DeepMind's file or the cached rendering in a folder, else rendered into
    ``<root>/dsprites``. ``colour=True`` gives colour dSprites (see ``colour_dataset``).

    The dataset has no official test split: ``Dataset.test`` is None and the data module holds out
    ``data.test_size`` images. Labels are the shape (0 square, 1 ellipse, 2 heart); ``Split.factors``
    holds all five factor classes and ``Dataset.factor_data`` samples images by factors."""

    generated = True  # built here when no copy is found (no network needed)

    def __init__(self, colour: bool = False, colour_seed: int = 0):
        self.colour = colour
        self.colour_seed = colour_seed
        self.name = "colour dSprites" if colour else "dSprites"

    def prepared(self, root: Path) -> Path:
        return root / "dsprites"

    def in_mirror(self, mirror: Path) -> list[Path]:
        return [mirror / "dsprites"]

    def try_load(self, folder: Path) -> Dataset | None:
        if (folder / DEEPMIND_FILE).is_file():
            return self._dataset(read_deepmind(folder / DEEPMIND_FILE))
        if (folder / CACHE_FILE).is_file():
            return self._dataset(_read_cache(folder / CACHE_FILE))
        return None

    def generate(self, root: Path) -> Dataset:
        path = self.prepared(root) / CACHE_FILE
        log.info("rendering dSprites once into %s", path)
        bits = render_grid()
        with atomic_file(path) as f:
            np.save(f, bits)
        return self._dataset(bits)

    def _dataset(self, bits: np.ndarray) -> Dataset:
        grey = PackedImages(torch.from_numpy(bits), (SIZE, SIZE))
        factors = torch.from_numpy(grid_classes())
        factor_data = FactorData(FACTOR_NAMES, FACTOR_VALUES, grey, random_colour=self.colour)
        images = grey
        if self.colour:
            generator = torch.Generator().manual_seed(self.colour_seed)
            colours = torch.rand(NUM_IMAGES, 3, generator=generator) * 0.5 + 0.5
            images = PackedImages(grey.bits, (SIZE, SIZE), colours.mul(255).round().to(torch.uint8))
        return Dataset(train=Split(images, factors[:, 0].clone(), factors), test=None, factor_data=factor_data)
