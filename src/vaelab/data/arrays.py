"""``data=array``: a user's images in a ``.npy`` or ``.npz`` file.

The images are one array [N, H, W], [N, H, W, C] or [N, C, H, W] (C = 1 or 3) of uint8, integers
in 0..255 or floats in [0, 1]: the ``.npy`` file's array, or in a ``.npz`` the array ``images``
(or ``x``, or its only array), with optional integer labels [N] as ``labels`` (or ``y``). They are
converted by ``vaelab.data.transform`` (``data.channels``, then resized and center-cropped to
``data.image_size``) and split by the data module (``data.test_size``, ``data.val_size``,
``data.split_seed``); without labels every image has label 0.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vaelab.data.sources import Dataset, Split
from vaelab.data.transform import as_uint8, layout, to_shape
from vaelab.errors import ConfigError, DataError

IMAGE_KEYS = ("images", "x")
LABEL_KEYS = ("labels", "y")


def _path(path: str | Path | None) -> Path:
    if path is None:
        raise ConfigError("data=array needs data.path=<your .npy or .npz file>")
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(f"data.path={file} is a folder: use data=folder for a folder of images")
    if not file.is_file():
        raise DataError(f"data.path={file} does not exist: give a .npy or .npz file of images")
    if file.suffix not in (".npy", ".npz"):
        raise DataError(f"data.path={file} is not a .npy or .npz file")
    return file


def read(path: str | Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The images and the labels (or None) of a .npy/.npz file, the labels checked."""
    file = _path(path)
    try:
        loaded = np.load(file, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {"images": loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{file} is corrupt or not a NumPy file ({err})") from None
    image_key = next((k for k in IMAGE_KEYS if k in arrays), None)
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    if image_key is None and len(arrays) == 1:
        image_key = next(iter(arrays))
    if image_key is None:
        raise DataError(f"{file} holds the arrays {', '.join(sorted(arrays))}: name the images 'images' (or 'x') "
                        "and the labels 'labels' (or 'y')")
    images, labels = arrays[image_key], arrays.get(label_key) if label_key else None
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
            raise DataError(f"{file}: the labels must be integers [N] for the {len(images)} images, got "
                            f"{labels.dtype} {list(labels.shape)}")
        if len(labels) and labels.min() < 0:
            raise DataError(f"{file}: the labels must be class indices >= 0, got {labels.min()}")
    return images, labels


@lru_cache(maxsize=16)
def _summary(file: Path, mtime_ns: int, size: int) -> tuple[tuple[int, int, int], int]:
    """((C, H, W), number of classes) of a file's images, read once per file state."""
    images, labels = read(file)
    order = layout(images.shape, file.name)
    shape = {"NHW": (1, *images.shape[1:]), "NCHW": images.shape[1:], "NHWC": np.roll(images.shape[1:], 1)}[order]
    return tuple(int(s) for s in shape), int(labels.max()) + 1 if labels is not None and len(labels) else 1


def fact(path: str | Path | None, what: str) -> int:
    """What the file's images say before anything is built: ``channels`` (from the array's layout),
    ``image_size`` (the smaller of H and W) or ``num_classes`` (the largest label + 1, else 1)."""
    file = _path(path)
    stat = file.stat()
    (c, h, w), classes = _summary(file, stat.st_mtime_ns, stat.st_size)
    return {"channels": c, "image_size": min(h, w), "num_classes": classes}[what]


class ArraySource:
    """``make_source`` for ``data=array``: the images of ``data.path`` as uint8 [C, S, S]."""

    generated = False

    def __init__(self, path: str | None, channels: int, image_size: int):
        self.path = _path(path)
        self.name = f"the array file {self.path}"
        self.shape = (int(channels), int(image_size), int(image_size))

    def prepared(self, root: Path) -> Path:
        return self.path

    def in_mirror(self, mirror: Path) -> list[Path]:
        return []

    def try_load(self, folder: Path) -> Dataset:
        images, labels = read(self.path)
        pixels = to_shape(as_uint8(images, f"the images of {self.path}"), self.shape)
        labels = torch.zeros(len(pixels), dtype=torch.int64) if labels is None else torch.from_numpy(labels).long()
        return Dataset(train=Split(pixels, labels), test=None)
