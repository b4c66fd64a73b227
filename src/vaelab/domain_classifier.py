"""A small CNN classifier of a dataset's images, whose penultimate layer is the feature space in
which generated images are compared with real ones ("FD on a domain classifier", the offline
stand-in for Inception features at MNIST scale) and whose accuracy on completed images says
whether a completion is still recognisably its class.

It is trained once per dataset and data settings, on the training split, and cached under
``data.root`` as ``domain_classifier/<dataset>-<hash>.pt`` (the hash covers the data settings
that change the training images and the classifier's own settings), with its test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.data.device_loader import DeviceBatches
from vaelab.errors import check_integer
from vaelab.files import atomic_file

log = logging.getLogger("vaelab")

# the datamodule settings that change which images (and pixels) the classifier is trained on
DATA_KEYS = ("name", "shape", "val_size", "split_seed", "binarize", "binarize_seed", "exclude_classes", "num_classes")


class DomainClassifier(nn.Module):
    """Two 3x3 conv + ReLU + 2x2 max-pool stages, a ``hidden``-unit ReLU layer (the features) and a
    linear layer to the class logits. ``body`` maps images [B, C, H, W] in [0, 1] to features
    [B, hidden] (an nn.Module, so it can serve as torchmetrics' feature extractor);
    ``test_accuracy`` is filled in by ``load_or_train``."""

    def __init__(self, shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32), hidden: int = 128):
        super().__init__()
        c, h, w = (int(s) for s in shape)
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU())
        self.body.num_features = hidden  # what torchmetrics' FrechetInceptionDistance reads
        self.head = nn.Linear(hidden, num_classes)
        self.test_accuracy = float("nan")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
        """The fraction of images [N, C, H, W] (float in [0, 1]) classified as their labels [N]."""
        device = next(self.parameters()).device
        correct = sum(int((self(x.to(device)).argmax(1).cpu() == y).sum())
                      for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True))
        return correct / len(labels)


def cache_path(datamodule, settings: dict) -> Path:
    """``<data.root>/domain_classifier/<dataset>-<hash of the data and classifier settings>.pt``."""
    data = {key: getattr(datamodule, key) for key in DATA_KEYS}
    data["shape"], data["exclude_classes"] = list(data["shape"]), sorted(data["exclude_classes"])
    if getattr(datamodule, "path", None):  # a user's own images (data=folder|array): which ones
        data["path"] = str(Path(datamodule.path).expanduser().resolve())
    text = json.dumps({"data": data, "classifier": settings}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Path(datamodule.root).expanduser() / "domain_classifier" / f"{datamodule.name}-{digest}.pt"


def load_or_train(datamodule, epochs: int = 2, batch_size: int = 128, lr: float = 1e-3,
                  channels: Sequence[int] = (16, 32), hidden: int = 128, seed: int = 0) -> DomainClassifier:
    """The datamodule's domain classifier (in eval mode, on the CPU): read from the cache, or
    trained on the training split with Adam (``epochs`` passes, ``batch_size``, ``lr``; weights and
    batch order from ``seed``), scored on the test split and written to the cache atomically."""
    check_integer("domain_classifier.epochs", epochs)
    check_integer("domain_classifier.batch_size", batch_size)
    check_integer("domain_classifier.hidden", hidden)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "channels": list(channels), "hidden": hidden,
                "seed": seed}
    datamodule.setup("fit")
    path = cache_path(datamodule, settings)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DomainClassifier(datamodule.shape, datamodule.num_classes, channels, hidden)
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(cached["state_dict"])
        model.test_accuracy = float(cached["test_accuracy"])
        log.info("domain classifier read from %s (test accuracy %.4f)", path, model.test_accuracy)
        return model.eval()
    start = time.perf_counter()
    _fit(model, datamodule.train_set, epochs, batch_size, lr, seed)
    test = datamodule.test_set
    model.test_accuracy = model.accuracy(test.images.float() / 255, test.labels)
    with atomic_file(path) as f:
        torch.save({"state_dict": model.state_dict(), "test_accuracy": model.test_accuracy, "settings": settings}, f)
    log.info("domain classifier trained in %.0f s (test accuracy %.4f), cached at %s",
             time.perf_counter() - start, model.test_accuracy, path)
    return model


def _fit(model: DomainClassifier, train, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """Minimize the cross-entropy over ``epochs`` shuffled passes (dynamically binarized data drawn
    afresh each batch, as the VAE saw them); leaves the model in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        batches = DeviceBatches(train.images, train.labels, batch_size, shuffle=True, seed=seed,
                                current_epoch=lambda e=epoch: e, binarize=train.binarize)
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
