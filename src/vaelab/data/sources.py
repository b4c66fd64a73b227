"""Where datasets come from, in order: a prepared ``data.root``, local mirror folders, torchvision's
download (or, for a dataset generated here, its rendering into ``data.root``); a user's own images
come from ``data.path`` alone (``data=folder``: ``vaelab.data.folder``, ``data=array``:
``vaelab.data.arrays``).

Each source returns uint8 images [N, C, H, W] and int64 labels [N] for the
official train and test sets (a dataset without an official test split, such as dSprites, returns
all its images as ``train`` and ``test=None``). Nothing is ever written into a mirror; what needs
caching (the decoded CIFAR-10 JPEG copy, the rendered dSprites) goes into ``data.root``, written
atomically (``vaelab.files.atomic_file``), so no half-written file remains.
Every file read is checked against its published checksum (``checksums.py``).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from vaelab.data.checksums import (
    CIFAR10_JPEG_MD5,
    IDX_MD5,
    Checksums,
    cifar10_batches_md5,
)
from vaelab.data.factors import FactorData
from vaelab.data.idx import idx_bytes, parse_idx
from vaelab.errors import ConfigError, DataError
from vaelab.files import atomic_file

log = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10", "dsprites", "color_dsprites")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")
# what the labels of a dataset (by data.name) mean, where they are not the digits 0, 1, ...
CLASS_NAMES = {"cifar10": CIFAR10_CLASSES, "fashion_mnist": FASHION_MNIST_CLASSES}


def class_names(dataset: str, num_classes: int) -> list[str]:
    """What each label of the dataset ``dataset`` (data.name) means: its class names, else the label numbers."""
    return list(CLASS_NAMES.get(dataset, [str(c) for c in range(num_classes)]))


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W] (or PackedImages, which reads like one)
    labels: torch.Tensor  # int64 [N]
    factors: torch.Tensor | None = None  # int64 [N, K]: the ground-truth factor classes, where known

    def take(self, index) -> Split:
        """The images, labels and factors at ``index`` (indices or a boolean mask)."""
        return replace(self, images=self.images[index], labels=self.labels[index],
                       factors=None if self.factors is None else self.factors[index])


@dataclass
class Dataset:
    train: Split
    test: Split | None  # None: no official test split (the data module holds one out)
    factor_data: FactorData | None = None  # the full factor grid, for datasets with ground-truth factors
    val: Split | None = None  # a given validation split (a user's val/ folder); None: held out of train


def _split(images: np.ndarray, labels: np.ndarray, name: str) -> Split:
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels; the files do not belong together")
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[:, None]
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


class IDXSource:
    """MNIST-style datasets stored as four IDX files (optionally .gz)."""

    generated = False

    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, name: str, torchvision_name: str, mirror_subdirs: Sequence[str], checksums: Checksums):
        self.name = name
        self.torchvision_name = torchvision_name
        self.mirror_subdirs = mirror_subdirs
        self.checksums = checksums

    def _find(self, folder: Path, stem: str) -> Path | None:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _complete(self, folder: Path) -> bool:
        return all(self._find(folder, f) for pair in self.FILES.values() for f in pair)

    def _read(self, folder: Path) -> Dataset:
        log.info("reading %s from %s", self.name, folder)
        arrays = {}
        for stem in (f for pair in self.FILES.values() for f in pair):
            path = self._find(folder, stem)
            content = idx_bytes(path)
            arrays[stem] = parse_idx(content, path)
            self.checksums.verify(path, IDX_MD5[self.name][stem], content)
        return Dataset(**{split: _split(arrays[images], arrays[labels], self.name)
                          for split, (images, labels) in self.FILES.items()})

    def prepared(self, root: Path) -> Path:
        return root / self.torchvision_name / "raw"

    def in_mirror(self, mirror: Path) -> list[Path]:
        return [mirror / sub for sub in self.mirror_subdirs]

    def try_load(self, folder: Path) -> Dataset | None:
        return self._read(folder) if self._complete(folder) else None

    def download(self, root: Path) -> Dataset:
        import torchvision.datasets as tvd

        getattr(tvd, self.torchvision_name)(str(root), train=True, download=True)
        return self._read(self.prepared(root))


class CIFAR10Source:
    """CIFAR-10 from torchvision's pickles or from the JPEG copy (``CIFAR10-JPEG/cifar10-jpeg.tar.gz``).

    The JPEG archive is decoded once into ``<root>/CIFAR10-JPEG/cifar10-jpeg.npz``.
    """

    name = "CIFAR-10"
    generated = False
    ARCHIVE = "CIFAR10-JPEG/cifar10-jpeg.tar.gz"
    CACHE = "CIFAR10-JPEG/cifar10-jpeg.npz"

    def __init__(self, root: Path, checksums: Checksums):
        self.root = root
        self.checksums = checksums

    def prepared(self, root: Path) -> Path:
        return root

    def in_mirror(self, mirror: Path) -> list[Path]:
        return [mirror]

    def try_load(self, folder: Path) -> Dataset | None:
        if (folder / "cifar-10-batches-py").is_dir():
            return self._torchvision(folder, download=False)
        if (folder / self.CACHE).is_file():  # (decoded by vaelab from a verified archive)
            return self._read_cache(folder / self.CACHE)
        if (folder / self.ARCHIVE).is_file():
            self.checksums.verify(folder / self.ARCHIVE, CIFAR10_JPEG_MD5)
            return self._read_cache(self._decode_archive(folder / self.ARCHIVE))
        return None

    def download(self, root: Path) -> Dataset:
        return self._torchvision(root, download=True)

    def _torchvision(self, folder: Path, download: bool) -> Dataset:
        import torchvision.datasets as tvd

        if not download:
            for name, md5 in cifar10_batches_md5().items():
                batch = folder / "cifar-10-batches-py" / name
                if batch.is_file():  # (a missing one is torchvision's error below)
                    self.checksums.verify(batch, md5)
        splits = {}
        for split in ("train", "test"):
            try:
                ds = tvd.CIFAR10(str(folder), train=split == "train", download=download)
            except RuntimeError as err:  # torchvision's integrity check failed
                raise DataError(f"CIFAR-10 in {folder}/cifar-10-batches-py is corrupt ({err})") from err
            splits[split] = _split(ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets), self.name)
        return Dataset(**splits)

    def _read_cache(self, path: Path) -> Dataset:
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
        except Exception as err:  # zip CRC error, missing member, truncated file
            raise DataError(f"{path} is corrupt or truncated ({err}): delete it to decode the archive again") from err
        return Dataset(
            train=_split(arrays["train_x"], arrays["train_y"], self.name),
            test=_split(arrays["test_x"], arrays["test_y"], self.name),
        )

    def _decode_archive(self, archive: Path) -> Path:
        from PIL import Image

        log.info("decoding %s once into %s", archive, self.root / self.CACHE)
        images: dict[str, list] = {"train": [], "test": []}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = sorted((m for m in tar if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
                for m in members:
                    split, cls, _ = Path(m.name).parts[-3:]
                    pixels = np.asarray(Image.open(BytesIO(tar.extractfile(m).read())).convert("RGB"))
                    images[split].append((CIFAR10_CLASSES.index(cls), pixels))
        except (tarfile.TarError, OSError, EOFError, ValueError, KeyError) as err:
            raise DataError(f"{archive} is corrupt or truncated ({err})") from err
        arrays = {}
        for split, items in images.items():
            if not items:
                raise DataError(f"{archive} holds no {split}/<class>/*.jpg images")
            arrays[f"{split}_x"] = np.stack([p for _, p in items]).transpose(0, 3, 1, 2)
            arrays[f"{split}_y"] = np.array([c for c, _ in items], dtype=np.int64)
        cache = self.root / self.CACHE
        with atomic_file(cache) as f:
            np.savez(f, **arrays)
        return cache


def make_source(name: str, root: Path, path: str | None = None, channels: int | None = None,
                image_size: int | None = None, verify: bool = True):
    """The source of dataset ``name``; ``path``, ``channels`` and ``image_size`` are the settings of a
    user's own images (``folder``, ``array``); with ``verify`` the published datasets' files are
    checked against their checksums (once per file version, cached under ``root``)."""
    checksums = Checksums(root, enabled=verify)
    if name in ("folder", "array"):
        from vaelab.data.user_data import (
            user_source,  # it builds on this module's Split and Dataset
        )

        return user_source(name, path, root, channels, image_size)
    if name == "mnist":
        return IDXSource("MNIST", "MNIST", ["MNIST/raw", "MNIST"], checksums)
    if name == "fashion_mnist":
        return IDXSource("Fashion-MNIST", "FashionMNIST", ["FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "."],
                         checksums)
    if name == "cifar10":
        return CIFAR10Source(root, checksums)
    if name in ("dsprites", "color_dsprites"):
        from vaelab.data.dsprites import (
            DSpritesSource,  # it builds on this module's Split and Dataset
        )

        return DSpritesSource(colour=name == "color_dsprites")
    raise ConfigError(f"unknown data.name {name!r}: choose one of {', '.join(DATASET_NAMES)}, folder, array")


def load_dataset(name: str, root: str | Path, mirrors: Sequence[str | None] = (), download: bool = True,
                 verify: bool = True, **user_settings) -> Dataset:
    """Load a dataset from the first place that has it: root, then each mirror, then a download into
    root (a generated dataset is rendered into root instead, whatever ``download`` says); a user's
    images from ``user_settings`` (``path``, ``channels``, ``image_size``; see ``make_source``). With
    ``verify`` each published file is checked against its checksum (once per file version)."""
    root = Path(root).expanduser().resolve()
    source = make_source(name, root, verify=verify, **user_settings)
    looked: list[str] = []
    candidates = [("data.root", source.prepared(root))]
    for mirror in mirrors:
        if mirror:
            candidates += [("mirror", folder) for folder in source.in_mirror(Path(mirror).expanduser())]
    for label, folder in candidates:
        dataset = source.try_load(folder)
        if dataset is not None:
            return dataset
        looked.append(f"{label} {folder}")
    if source.generated:
        return source.generate(root)
    if not any(mirrors):
        looked.append("no mirror (data.mirror / VAELAB_DATA_MIRROR unset)")
    if download:
        try:
            return source.download(root)
        except Exception as err:  # no network, server down, checksum mismatch
            looked.append(f"torchvision download into {root} failed ({type(err).__name__}: {err})".replace("\n", " "))
    else:
        looked.append("download disabled (data.download=false)")
    raise DataError(
        f"{source.name} not found; looked in: {'; '.join(looked)}. "
        "Fix: set data.mirror=<folder> or VAELAB_DATA_MIRROR to a mirror with the layout in the README, "
        "put the prepared files under data.root, or allow the download (data.download=true) with network access"
    )
