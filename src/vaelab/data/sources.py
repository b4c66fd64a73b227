"""Where datasets come from, in order: a prepared ``data.root``, local mirror folders, torchvision's download.

Each source returns uint8 images [N, C, H, W] and int64 labels [N] for the
official train and test sets. Nothing is ever written into a mirror; what needs
caching (the decoded CIFAR-10 JPEG copy) goes into ``data.root``, written
atomically (``vaelab.files.atomic_file``), so no half-written file remains.
Every file read is checked against its published checksum (``checksums.py``).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

from vaelab.data.checksums import CIFAR10_JPEG_MD5, IDX_MD5, Checksums, cifar10_batches_md5
from vaelab.data.idx import idx_bytes, parse_idx
from vaelab.errors import ConfigError, DataError
from vaelab.files import atomic_file

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]


@dataclass
class Dataset:
    train: Split
    test: Split


def _split(images: np.ndarray, labels: np.ndarray, name: str) -> Split:
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels; the files do not belong together")
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[:, None]
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


class IDXSource:
    """MNIST-style datasets stored as four IDX files (optionally .gz)."""

    FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, name: str, torchvision_name: str, mirror_subdirs: Sequence[str]):
        self.name = name
        self.torchvision_name = torchvision_name
        self.mirror_subdirs = mirror_subdirs

    def _find(self, folder: Path, stem: str) -> Path | None:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _complete(self, folder: Path) -> bool:
        return all(self._find(folder, f) for pair in self.FILES.values() for f in pair)

    def _read(self, folder: Path, checksums: Checksums) -> Dataset:
        log.info("reading %s from %s", self.name, folder)
        arrays = {}
        for stem in (f for pair in self.FILES.values() for f in pair):
            path = self._find(folder, stem)
            content = idx_bytes(path)
            arrays[stem] = parse_idx(content, path)
            checksums.verify(path, IDX_MD5[self.name][stem], content)
        return Dataset(**{split: _split(arrays[images], arrays[labels], self.name)
                          for split, (images, labels) in self.FILES.items()})

    def prepared(self, root: Path) -> Path:
        return root / self.torchvision_name / "raw"

    def in_mirror(self, mirror: Path) -> list[Path]:
        return [mirror / sub for sub in self.mirror_subdirs]

    def try_load(self, folder: Path, checksums: Checksums) -> Dataset | None:
        return self._read(folder, checksums) if self._complete(folder) else None

    def download(self, root: Path, checksums: Checksums) -> Dataset:
        import torchvision.datasets as tvd

        getattr(tvd, self.torchvision_name)(str(root), train=True, download=True)
        return self._read(self.prepared(root), checksums)


class CIFAR10Source:
    """CIFAR-10 from torchvision's pickles or from the JPEG copy (``CIFAR10-JPEG/cifar10-jpeg.tar.gz``).

    The JPEG archive is decoded once into ``<root>/CIFAR10-JPEG/cifar10-jpeg.npz``.
    """

    name = "CIFAR-10"
    ARCHIVE = "CIFAR10-JPEG/cifar10-jpeg.tar.gz"
    CACHE = "CIFAR10-JPEG/cifar10-jpeg.npz"

    def __init__(self, root: Path):
        self.root = root

    def prepared(self, root: Path) -> Path:
        return root

    def in_mirror(self, mirror: Path) -> list[Path]:
        return [mirror]

    def try_load(self, folder: Path, checksums: Checksums) -> Dataset | None:
        if (folder / "cifar-10-batches-py").is_dir():
            return self._torchvision(folder, download=False, checksums=checksums)
        if (folder / self.CACHE).is_file():  # (decoded by vaelab from a verified archive)
            return self._read_cache(folder / self.CACHE)
        if (folder / self.ARCHIVE).is_file():
            checksums.verify(folder / self.ARCHIVE, CIFAR10_JPEG_MD5)
            return self._read_cache(self._decode_archive(folder / self.ARCHIVE))
        return None

    def download(self, root: Path, checksums: Checksums) -> Dataset:
        return self._torchvision(root, download=True, checksums=checksums)

    def _torchvision(self, folder: Path, download: bool, checksums: Checksums) -> Dataset:
        import torchvision.datasets as tvd

        if not download:
            for name, md5 in cifar10_batches_md5().items():
                batch = folder / "cifar-10-batches-py" / name
                if batch.is_file():  # (a missing one is torchvision's error below)
                    checksums.verify(batch, md5)
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


def make_source(name: str, root: Path):
    if name == "mnist":
        return IDXSource("MNIST", "MNIST", ["MNIST/raw", "MNIST"])
    if name == "fashion_mnist":
        return IDXSource("Fashion-MNIST", "FashionMNIST", ["FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "."])
    if name == "cifar10":
        return CIFAR10Source(root)
    raise ConfigError(f"unknown data.name {name!r}: choose one of mnist, fashion_mnist, cifar10")


def load_dataset(name: str, root: str | Path, mirrors: Sequence[str | None] = (), download: bool = True,
                 verify: bool = True) -> Dataset:
    """Load a dataset from the first place that has it: root, then each mirror, then a download into root.
    With ``verify`` each file is checked against its published checksum (once per file version)."""
    root = Path(root).expanduser().resolve()
    source = make_source(name, root)
    checksums = Checksums(root, enabled=verify)
    looked: list[str] = []
    candidates = [("data.root", source.prepared(root))]
    for mirror in mirrors:
        if mirror:
            candidates += [("mirror", folder) for folder in source.in_mirror(Path(mirror).expanduser())]
    for label, folder in candidates:
        dataset = source.try_load(folder, checksums)
        if dataset is not None:
            return dataset
        looked.append(f"{label} {folder}")
    if not any(mirrors):
        looked.append("no mirror (data.mirror / VAELAB_DATA_MIRROR unset)")
    if download:
        try:
            return source.download(root, checksums)
        except Exception as err:  # no network, server down, checksum mismatch
            looked.append(f"torchvision download into {root} failed ({type(err).__name__}: {err})".replace("\n", " "))
    else:
        looked.append("download disabled (data.download=false)")
    raise DataError(
        f"{source.name} not found; looked in: {'; '.join(looked)}. "
        "Fix: set data.mirror=<folder> or VAELAB_DATA_MIRROR to a mirror with the layout in the README, "
        "put the prepared files under data.root, or allow the download (data.download=true) with network access"
    )
