"""LightningDataModule for small image datasets held in memory as uint8 tensors.

Two ways to serve batches, both converting to float intensities in [0, 1] per batch:

- ``on_device``: each split lives as one tensor on the training device and batches are
  gathered there by index (``DeviceBatches``), with no DataLoader at all;
- otherwise a DataLoader whose dataset gathers a whole batch with one tensor index
  (``__getitems__``) instead of one PIL image per sample.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from dataclasses import replace

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from vaelab.data import sources
from vaelab.data.device_loader import DeviceBatches
from vaelab.data.packed import PackedImages
from vaelab.data.sources import Split, load_dataset
from vaelab.errors import ConfigError, DataError


class TensorImages(Dataset):
    """Images (uint8 [N, C, H, W]) and labels served as (float images in [0, 1], labels) batches;
    with ``binarize`` each pixel is drawn as Bernoulli(intensity) at every access. ``factors``: the
    ground-truth factor classes [N, K] of a dataset that has them (dSprites), else None."""

    def __init__(self, split: Split, binarize: bool = False):
        self.images = split.images
        self.labels = split.labels
        self.factors = split.factors
        self.binarize = binarize

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(255.0)
        return (torch.bernoulli(x) if self.binarize else x), self.labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]


def _already_batched(batch):
    """collate_fn for TensorImages: ``__getitems__`` already returns a whole batch."""
    return batch


class ImageDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST, CIFAR-10, dSprites, colour dSprites or a user's images (``folder``,
    ``array``: ``path``, converted to ``channels`` and ``image_size``): a deterministic train/val
    split of the official training set (``val_size`` images, chosen by ``split_seed``) and the
    official test set. A dataset without an official test split (dSprites, a user's images without
    a test/ folder) first loses ``test_size`` images, chosen by ``split_seed``, to the test set;
    ``test_size`` must be null for the others. A given validation split (a user's val/ folder) is
    used as it is. ``val_size`` and ``test_size`` below 1 are fractions of the images they are taken
    from (rounded, at least one image).

    Datasets with ground-truth factors (dSprites) give each split's ``factors`` (int64 [N, K]) and
    ``factor_data`` (``vaelab.data.factors.FactorData``, the whole factor grid, on the CPU), from
    which the disentanglement metrics sample; None for the others. Their binary images are kept as
    packed bits (``PackedImages``), so ``binarize`` must stay ``none``.

    ``batch_size`` is the global batch: under DDP each of the W processes gets
    ``batch_size / W`` images per step (it must divide evenly).

    ``binarize``: ``none`` serves intensities in [0, 1]; ``static`` draws every pixel once as
    Bernoulli(intensity) with ``binarize_seed``; ``dynamic`` draws the training images afresh at
    every batch and the validation and test images once, as ``static`` does, so that evaluation
    is repeatable. ``exclude_classes`` removes those labels from the training and validation
    sets (the test set stays whole), e.g. to hold a digit out for anomaly detection.

    ``verify`` checks each file against its published checksum (once per file version, see
    ``checksums.py``); false skips it.

    ``on_device``: ``auto`` keeps the splits on the training device when they fit in a quarter
    of its free memory (always on the CPU, where they are in memory anyway), ``true`` always,
    ``false`` never (then ``num_workers`` and ``pin_memory`` apply). ``seed`` fixes the
    shuffling order of the on-device batches, epoch by epoch.

    Few labels, for semi-supervised learning (the M2 model of Kingma et al. 2014):
    ``labels_per_class`` keeps the labels of only that many training images of each class (of
    the classes left after ``exclude_classes``), a balanced subset chosen by ``labels_seed``
    (``labelled_indices``, indices into ``train_set``; ``num_labelled`` of them). Each training
    batch is then the usual ``batch_size`` images of the whole training set with label -1
    ("unknown") followed by ``labelled_batch_size`` images of the labelled subset with their
    labels; see ``DeviceBatches`` for how that part is drawn. ``labelled_batch_size`` is per
    process under DDP (each process draws its own), not global like ``batch_size``. Validation
    and test images keep their labels. These batches are served by ``DeviceBatches`` only: with
    ``on_device=false`` the training loader is a ConfigError, and with ``auto`` the training split
    stays in CPU memory when it does not fit on the device (Lightning moves each batch there).
    ``labels_per_class=null`` (the default) knows every training label and changes nothing.
    ``num_classes`` is the number of classes the labels range over (for the model's classifier).
    """

    def __init__(self, name: str, shape: Sequence[int], root: str, mirror: str | None = None,
                 extra_mirrors: Sequence[str] = (), download: bool = True, verify: bool = True, val_size: int = 5000,
                 split_seed: int = 0, batch_size: int = 128, eval_batch_size: int | None = None,
                 num_workers: int = 0, pin_memory: bool = False, on_device: bool | str = "auto",
                 seed: int | None = 0, binarize: str = "none", binarize_seed: int = 0,
                 exclude_classes: Sequence[int] = (), num_classes: int = 10, labels_per_class: int | None = None,
                 labels_seed: int = 0, labelled_batch_size: int = 100, test_size: float | None = None,
                 path: str | None = None, channels: int | None = None, image_size: int | None = None):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {val_size}")
        if test_size is not None and test_size <= 0:
            raise ConfigError(f"data.test_size must be a number of images or a fraction of them (or null for a "
                              f"dataset with an official test set), got {test_size}")
        self.test_size = test_size
        # a user's own images (folder, array): where they are and what they are converted to
        self.user_settings = {"path": path, "channels": channels, "image_size": image_size} if name in (
            "folder", "array") else {}
        self.path = path
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.root = root
        self.mirrors = [mirror, *extra_mirrors]
        self.download = download
        self.verify = verify
        self.val_size = val_size
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        if on_device not in (True, False, "auto"):
            raise ConfigError(f"data.on_device must be auto, true or false, got {on_device!r}")
        self.on_device = on_device
        if binarize not in ("none", "static", "dynamic"):
            raise ConfigError(f"data.binarize must be none, static or dynamic, got {binarize!r}")
        self.binarize = binarize
        self.binarize_seed = binarize_seed
        self.exclude_classes = list(exclude_classes)
        self.seed = seed or 0
        if num_classes < 1:
            raise ConfigError(f"data.num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        if labels_per_class is not None and (isinstance(labels_per_class, bool) or labels_per_class < 1):
            raise ConfigError(
                f"data.labels_per_class must be >= 1 (or null to use every training label), got {labels_per_class}"
            )
        if labelled_batch_size < 1:
            raise ConfigError(f"data.labelled_batch_size must be >= 1, got {labelled_batch_size}")
        self.labels_per_class = labels_per_class
        self.labels_seed = labels_seed
        self.labelled_batch_size = labelled_batch_size
        self.labelled_indices: torch.Tensor | None = None
        self.train_set = self.val_set = self.test_set = None
        self.factor_data = None
        self.device_splits: dict[str, Split] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        data = self._with_test_split(load_dataset(self.name, self.root, self.mirrors, self.download, self.verify,
                                                  **self.user_settings))
        if isinstance(data.train.images, PackedImages) and self.binarize != "none":
            raise ConfigError(f"{self.name} is binary already: use data.binarize=none")
        if tuple(data.train.images.shape[1:]) != self.shape:
            raise DataError(
                f"{self.name} images have shape {list(data.train.images.shape[1:])} but data.shape is {list(self.shape)}"
            )
        top = int(max(data.train.labels.max(), data.test.labels.max()))
        if top >= self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {self.name} has label {top}: use data.num_classes={top + 1}"
            )
        train, val = self._with_val_split(data)
        self.labelled_indices = self._labelled_subset(train.labels)
        dynamic = self.binarize == "dynamic"
        self.train_set = TensorImages(self._binarized(train, 1) if not dynamic else train, binarize=dynamic)
        self.val_set = TensorImages(self._binarized(val, 2)) if len(val.labels) else None
        self.test_set = TensorImages(self._binarized(data.test, 3))
        self.factor_data = data.factor_data
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self._fits_on(device):
            self.device_splits = {
                name: Split(ds.images.to(device), ds.labels.to(device))
                for name, ds in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))
                if ds is not None
            }

    @staticmethod
    def _count(size: float, n: int) -> int:
        """``size`` images of n: a count, or below 1 a fraction of n (rounded, at least one image)."""
        return int(size) if size >= 1 or size == 0 else max(1, round(size * n))

    def _with_test_split(self, data: sources.Dataset) -> sources.Dataset:
        """The dataset with its official test set, or with ``test_size`` images (the first of a
        permutation drawn with ``split_seed``) held out as one where it has none."""
        if data.test is not None:
            if self.test_size is not None and self.name not in ("folder", "array"):
                raise ConfigError(f"{self.name} has an official test set: leave data.test_size=null")
            return data
        n = len(data.train.labels)
        size = None if self.test_size is None else self._count(self.test_size, n)
        if size is None or size >= n:
            raise ConfigError(f"{self.name} has no official test set: set data.test_size to the number of its "
                              f"{n} images (or the fraction of them) to hold out for testing")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        test_idx, train_idx = order[:size].sort().values, order[size:].sort().values
        return replace(data, train=data.train.take(train_idx), test=data.train.take(test_idx))

    def _with_val_split(self, data: sources.Dataset) -> tuple[Split, Split]:
        """(training, validation) images: the given validation split, or ``val_size`` training images
        (the first of a permutation drawn with ``split_seed``); classes in ``exclude_classes`` removed."""
        if data.val is not None:
            return self._kept(data.train), self._kept(data.val)
        n = len(data.train.labels)
        size = self._count(self.val_size, n)
        if size >= n:
            raise ConfigError(f"data.val_size={self.val_size} leaves no training images (the training set has {n})")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = order[:size].sort().values, order[size:].sort().values
        return self._kept(data.train.take(train_idx)), self._kept(data.train.take(val_idx))

    def _kept(self, split: Split) -> Split:
        if not self.exclude_classes:
            return split
        return split.take(~torch.isin(split.labels, torch.tensor(self.exclude_classes)))

    def _labelled_subset(self, labels: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the training images whose labels are known: all of them, or the first
        ``labels_per_class`` of each class in an order drawn with ``labels_seed``."""
        if self.labels_per_class is None:
            return torch.arange(len(labels))
        counts = torch.bincount(labels)
        classes = counts.nonzero().flatten()
        smallest = int(classes[counts[classes].argmin()])
        if self.labels_per_class > counts[smallest]:
            raise ConfigError(
                f"data.labels_per_class={self.labels_per_class} is more than the {int(counts[smallest])} training "
                f"images of class {smallest}: use at most {int(counts[smallest])}"
            )
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.labels_seed))
        shuffled = labels[order]
        picked = [order[shuffled == c][: self.labels_per_class] for c in classes.tolist()]
        return torch.cat(picked).sort().values

    @property
    def num_labelled(self) -> int | None:
        """How many training labels are known (``labels_per_class`` x classes, or the whole training
        set without it); None before ``setup``."""
        return None if self.labelled_indices is None else len(self.labelled_indices)

    @property
    def semi_supervised(self) -> bool:
        """Whether training batches carry a labelled part (``labels_per_class`` is set)."""
        return self.labels_per_class is not None

    def _binarized(self, split: Split, stream: int) -> Split:
        """Every pixel drawn once as Bernoulli(intensity), stored as 0 or 255 (unless binarize=none)."""
        if self.binarize == "none":
            return split
        generator = torch.Generator().manual_seed(self.binarize_seed * 10 + stream)
        draws = torch.rand(split.images.shape, generator=generator) < split.images.float() / 255
        return replace(split, images=draws.to(torch.uint8) * 255)

    def _fits_on(self, device: torch.device) -> bool:
        if self.on_device != "auto" or device.type == "cpu":
            return bool(self.on_device)
        size = sum(ds.images.nbytes for ds in (self.train_set, self.val_set, self.test_set) if ds is not None)
        free, _ = torch.cuda.mem_get_info(device) if device.type == "cuda" else (0, 0)
        return size < free / 4

    @property
    def has_validation(self) -> bool:
        """Whether there are validation images (known once ``setup`` ran)."""
        return self.val_set is not None

    def per_device_batch_size(self, batch_size: int) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if batch_size % world:
            raise ConfigError(
                f"data.batch_size={batch_size} does not divide across {world} processes: "
                f"use a multiple of {world} (the batch size is global)"
            )
        return batch_size // world

    def _loader(self, split: str, dataset: TensorImages, batch_size: int, shuffle: bool):
        semi_supervised = split == "train" and self.semi_supervised
        if semi_supervised and split not in self.device_splits:
            if self.on_device is False:
                raise ConfigError(
                    "data.labels_per_class needs the on-device batches: use data.on_device=true or auto "
                    "(the DataLoader of data.on_device=false has no labelled part)"
                )
            data = Split(dataset.images, dataset.labels)  # auto, too big for the device: batches from CPU memory
        else:
            data = self.device_splits.get(split)
        if data is not None:
            trainer = self.trainer
            labelled = self.labelled_indices.to(data.images.device) if semi_supervised else None
            return DeviceBatches(
                data.images, data.labels, self.per_device_batch_size(batch_size), shuffle=shuffle, seed=self.seed,
                rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
                even_shards=split == "train", current_epoch=lambda: trainer.current_epoch if trainer else 0,
                binarize=dataset.binarize, batches_done=lambda: self._batches_done(split),
                labelled=labelled, labelled_batch_size=self.labelled_batch_size,
            )
        if self.num_workers > 0 and multiprocessing.current_process().daemon:
            raise ConfigError(
                "data.num_workers > 0 cannot start DataLoader workers inside a daemonic process (a joblib sweep "
                "worker, Hydra #964): use data.num_workers=0 (the default) with data.on_device=auto"
            )
        return DataLoader(
            dataset, batch_size=self.per_device_batch_size(batch_size), shuffle=shuffle,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=_already_batched,
            persistent_workers=self.num_workers > 0,
        )

    def _batches_done(self, split: str) -> int:
        """Training batches finished in the current epoch (what a checkpoint written now has seen)."""
        if split != "train" or self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self):
        return self._loader("train", self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return self._loader("val", self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader("test", self.test_set, self.eval_batch_size, shuffle=False)

    def examples(self, n: int, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images (float [0, 1]) and labels of a split; the test set stands in when there is no val split."""
        dataset = self.val_set if split == "val" and self.val_set is not None else self.test_set
        return dataset.__getitems__(range(min(n, len(dataset))))
