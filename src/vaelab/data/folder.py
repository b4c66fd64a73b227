"""``data=folder``: a user's folder of images (PNG, JPEG, ...; any sizes, grey or RGB).

The folder (``data.path``) is laid out in one of three ways:

- flat: the images themselves (one class, label 0);
- one subfolder per class, as torchvision's ``ImageFolder``: the labels are the subfolders' indices
  in sorted order, the images in each found recursively;
- split folders ``train/`` and, optionally, ``val/`` and ``test/``, each flat or holding the same
  class subfolders: they are the splits as given (without ``val/`` the data module holds
  ``data.val_size`` training images out for validation, without ``test/`` ``data.test_size`` for
  testing, both chosen by ``data.split_seed``).

Every image is converted once (``vaelab.data.transform``: ``data.channels``, then resized and
center-cropped to ``data.image_size``) into uint8 tensors, which are cached atomically in
``<data.root>/folders/<folder name>-<key>.npz``; the key hashes the folder's path, its files'
names, sizes and modification times, the channels and the size, so any change decodes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from vaelab.data.sources import Dataset, Split
from vaelab.data.transform import (
    IMAGE_SUFFIXES,
    list_files,
    listing,
    read_files,
    read_headers,
    refuse_other_files,
)
from vaelab.errors import ConfigError, DataError
from vaelab.files import atomic_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_VERSION = 1


@dataclass
class FolderLayout:
    """The images of a folder: ``files`` and ``labels`` by group (``train``, ``val``, ``test`` for
    split folders, else the one group ``all``); ``classes``: the class subfolders' names, sorted
    ([] for flat folders)."""

    root: Path
    classes: list[str]
    files: dict[str, list[Path]]
    labels: dict[str, list[int]]

    @property
    def all_files(self) -> list[Path]:
        return [f for group in self.files.values() for f in group]

    def fingerprint(self) -> tuple:
        """What a change of the folder's contents changes: each file's name, size and modification time."""
        stats = ((f, f.stat()) for f in self.all_files)
        return tuple((str(f.relative_to(self.root)), s.st_size, s.st_mtime_ns) for f, s in stats)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(path: str | Path | None) -> FolderLayout:
    """The layout of the folder ``path`` (see the module docstring), or one DataError."""
    if path is None:
        raise ConfigError("data=folder needs data.path=<the folder of your images>")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path={root} is not a folder: give the folder of your images "
                        "(or use data=array for a .npy/.npz file)")
    images, others = list_files(root)
    refuse_other_files(others, len(images) + len(others), root)
    if not images:
        raise DataError(f"data.path={root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if (root / "train").is_dir():
        groups = {s: root / s for s in SPLITS if (root / s).is_dir()}
        stray = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in groups]
        if stray:
            raise DataError(f"{root} holds split folders (train/, val/, test/) and also {listing(stray)}: "
                            "move everything into the split folders")
    else:
        groups = {"all": root}
    class_dirs = {name: _subfolders(folder) for name, folder in groups.items()}
    classes = sorted({d.name for dirs in class_dirs.values() for d in dirs})
    files: dict[str, list[Path]] = {}
    labels: dict[str, list[int]] = {}
    for name, folder in groups.items():
        direct = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if classes and direct:
            raise DataError(f"{folder} holds image files directly, but the class labels come from subfolders "
                            f"({', '.join(classes)}): put every image in a class subfolder, or none")
        if classes and not class_dirs[name]:
            raise DataError(f"{folder} has no class subfolders but the other split folders have "
                            f"({', '.join(classes)}): give every split folder the same layout")
        files[name], labels[name] = [], []
        for d in class_dirs[name] if classes else [folder]:
            found = list_files(d)[0]
            if not found:
                raise DataError(f"the class folder {d} holds no images: remove it or add its images")
            files[name] += found
            labels[name] += [classes.index(d.name) if classes else 0] * len(found)
        if not files[name]:
            raise DataError(f"the split folder {folder} holds no images")
    return FolderLayout(root, classes, files, labels)


@lru_cache(maxsize=16)
def _headers(layout_root: Path, fingerprint: tuple) -> tuple[tuple[Path, tuple[int, int, int]], ...]:
    """(file relative to the folder, (channels, height, width)) of every image, read once per folder state."""
    layout = scan(layout_root)
    return tuple(zip((f.relative_to(layout_root) for f in layout.all_files),
                     read_headers(layout.all_files, layout_root), strict=True))


def fact(path: str | Path | None, what: str) -> int:
    """What the folder's images say before anything is built, from their headers: ``channels`` (1 or
    3, which all its images must share, else a DataError), ``image_size`` (the smallest side among
    them, so that none is enlarged) or ``num_classes`` (the class subfolders, 1 without them)."""
    layout = scan(path)
    if what == "num_classes":
        return max(1, len(layout.classes))
    headers = _headers(layout.root, layout.fingerprint())
    if what == "image_size":
        return min(min(h, w) for _, (_, h, w) in headers)
    grey, rgb = ([f for f, (c, _, _) in headers if c == channels] for channels in (1, 3))
    if grey and rgb:
        raise DataError(f"{layout.root} mixes {len(grey)} grey images ({listing(grey, 3)}) and {len(rgb)} RGB images "
                        f"({listing(rgb, 3)}): set data.channels=1 or data.channels=3 to convert them all")
    return 1 if grey else 3


class FolderSource:
    """``make_source`` for ``data=folder``: the images of ``data.path`` as uint8 [C, S, S], cached in ``root``."""

    generated = False

    def __init__(self, path: str | None, root: Path, channels: int, image_size: int):
        self.layout = scan(path)
        self.name = f"the image folder {self.layout.root}"
        self.root, self.shape = root, (int(channels), int(image_size), int(image_size))

    def prepared(self, root: Path) -> Path:
        return self.layout.root

    def in_mirror(self, mirror: Path) -> list[Path]:
        return []

    def cache_file(self) -> Path:
        key = json.dumps({"version": CACHE_VERSION, "path": str(self.layout.root.resolve()),
                          "files": self.layout.fingerprint(), "shape": self.shape})
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.root / "folders" / f"{self.layout.root.resolve().name}-{digest}.npz"

    def try_load(self, folder: Path) -> Dataset:
        cache = self.cache_file()
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    arrays = {k: z[k] for k in z.files}
            except Exception as err:  # zip CRC error, missing member, truncated file
                raise DataError(f"{cache} is corrupt or truncated ({err}): delete it to decode the folder again") from err
        else:
            arrays = self._decode(cache)
        splits = {group: Split(torch.from_numpy(arrays[f"{group}_x"]), torch.from_numpy(arrays[f"{group}_y"]))
                  for group in self.layout.files}
        if "all" in splits:
            return Dataset(train=splits["all"], test=None)
        return Dataset(train=splits["train"], test=splits.get("test"), val=splits.get("val"))

    def _decode(self, cache: Path) -> dict[str, np.ndarray]:
        files = self.layout.all_files
        log.info("decoding the %d images of %s once into %s", len(files), self.layout.root, cache)
        images = read_files(files, self.shape, self.layout.root).numpy()
        arrays, start = {}, 0
        for group, group_files in self.layout.files.items():
            arrays[f"{group}_x"] = images[start:start + len(group_files)]
            arrays[f"{group}_y"] = np.array(self.layout.labels[group], dtype=np.int64)
            start += len(group_files)
        with atomic_file(cache) as f:
            np.savez(f, **arrays)
        return arrays
