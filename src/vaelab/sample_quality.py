"""How close generated images are to real ones, in the feature space of a network.

For N generated and N test images with features f (a network's penultimate layer):

- Frechet distance between the Gaussians fitted to the two feature sets (torchmetrics'
  FrechetInceptionDistance, with the features handed to it):
  FD = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2));
- precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls
  around its points, each with the radius of the distance to the point's k-th nearest
  neighbour in its own set; precision = the fraction of generated points inside the real
  manifold, recall = the fraction of real points inside the generated manifold.

Two feature networks: the dataset's ``DomainClassifier`` (always; metrics ``*_domain``, never
called FID) and, when torch-fidelity and its weights are on the machine, the Inception network
of the standard FID (``samples/fid``, ``*_inception``). Every sampler (the model's prior, a GMM
fitted to the training latents, ...) gets its own metrics, ``samples/<sampler>/...``, beside
``samples/train/...``: N training images in place of generated ones, the floor of each metric.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from vaelab.domain_classifier import DomainClassifier
from vaelab.errors import ConfigError, check_integer

log = logging.getLogger("vaelab")

# torch-fidelity's Inception weights (the TensorFlow FID network), looked for in torch.hub's cache, where
# torch-fidelity downloads them; copy the file there (or name it in sample_quality.inception_weights) for offline use
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
FID_MODES = ("auto", "on", "off")


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets [N, d] and [M, d]
    (unbiased covariances; torchmetrics computes it in float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    identity = nn.Identity()
    identity.num_features = real.shape[1]  # the features are given: the "network" is the identity
    metric = FrechetInceptionDistance(feature=identity, normalize=True)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """The distance from each point [N, d] to its k-th nearest other point of the set: [N]."""
    # the point itself is at distance 0, the smallest: the k-th other point is the (k + 1)-th smallest
    return torch.cat([torch.cdist(rows, points).kthvalue(k + 1, dim=1).values for rows in points.split(chunk)])


def _fraction_inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """The fraction of queries within radii[i] of some points[i]."""
    inside = torch.cat([(torch.cdist(rows, points) <= radii).any(1) for rows in queries.split(chunk)])
    return inside.double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of fake features [M, d] against
    real features [N, d], with k-nearest-neighbour balls; distances in float64."""
    check_integer("sample_quality.k", k)
    if k >= min(len(real), len(fake)):
        raise ConfigError(f"sample_quality.k={k} needs more than {k} images in each set; "
                          f"got {len(real)} real and {len(fake)} generated")
    real, fake = real.double(), fake.double()
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


def feature_metrics(real: torch.Tensor, fake: torch.Tensor, k: int, suffix: str, fd_name: str) -> dict[str, float]:
    """{fd_name: Frechet distance, precision_<suffix>, recall_<suffix>} of two feature sets."""
    precision, recall = precision_recall(real, fake, k)
    return {fd_name: frechet_distance(real, fake), f"precision_{suffix}": precision, f"recall_{suffix}": recall}


@torch.no_grad()
def generate(model, sampler, n: int, decode: str, seed: int, batch_size: int) -> torch.Tensor:
    """n images [n, C, H, W] on the CPU from the sampler's latents: E[x|z] (``decode=mean``) or
    x ~ p(x|z) (``sample``). A conditional model gets the classes in turn (0, 1, ..., K-1, 0, ...)."""
    z = sampler.sample(n, model, seed=seed)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    images = []
    for start in range(0, n, batch_size):
        zb = z[start : start + batch_size].to(model.device)
        y = (torch.arange(start, start + len(zb), device=model.device) % model.num_classes
             if model.conditional else None)
        params = model.decoder_params(zb, y)
        x = model.likelihood.sample(params, generator) if decode == "sample" else model.likelihood.mean(params)
        images.append(x.clamp(0, 1).float().cpu())
    return torch.cat(images)


@torch.no_grad()
def features_of(network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int,
                device: torch.device) -> torch.Tensor:
    """network(images) batch by batch: [N, d] float64 on the CPU."""
    return torch.cat([network(x.to(device)).double().cpu() for x in images.split(batch_size)])


def inception_network(fid: str, weights: str | None, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchmetrics' Inception network of the standard FID (2048 pool features), taking images in
    [0, 1] with 1 or 3 channels. ``fid=on``: always (torch-fidelity downloads the weights when the
    file is missing); ``auto``: only on a GPU and with the weights file on the machine (on the CPU
    the 299 x 299 network takes about a second per image); ``off``: never. None, with one log line
    saying why, when it does not run, including when torch-fidelity is not installed."""
    if fid not in FID_MODES:
        raise ConfigError(f"sample_quality.fid={fid} is unknown: choose one of {', '.join(FID_MODES)}")
    if fid == "off":
        return None
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception network is torch-fidelity's)
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        log.info("samples/fid skipped: the Inception network needs torch-fidelity (pip install torch-fidelity)")
        return None
    path = Path(weights).expanduser() if weights else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not path.is_file() and (weights or fid == "auto"):  # (fid=on with no file named: torch-fidelity downloads it)
        log.info("samples/fid skipped: no Inception weights at %s (download %s there, or run with "
                 "sample_quality.fid=on on a machine with network access)", path, INCEPTION_URL)
        return None
    if fid == "auto" and device.type != "cuda":
        log.info("samples/fid skipped on the CPU (about a second per image): sample_quality.fid=on computes it anyway")
        return None
    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                             feature_extractor_weights_path=str(path) if path.is_file() else None).to(device)

    def features(x: torch.Tensor) -> torch.Tensor:  # uint8 RGB, resized to 299 x 299 inside the network
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return net((rgb * 255).round().to(torch.uint8))

    return features


def evaluate(model, datamodule, samplers: Mapping[str, object], classifier: DomainClassifier, *,
             num_images: int = 10000, k: int = 3, decode: str = "auto", fid: str = "auto",
             inception_weights: str | None = None, batch_size: int = 500,
             seed: int = 0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Sample quality of each (fitted) sampler against ``num_images`` test images (at most the test
    set), and of as many training images (``samples/train/...``, the floor):
    ``samples/<name>/fd_domain``, ``precision_domain``, ``recall_domain`` and, with the Inception
    network, ``fid``, ``precision_inception``, ``recall_inception``; ``samples/domain_classifier_acc``
    is the domain classifier's test accuracy. ``decode``: ``mean`` (E[x|z]), ``sample`` (x ~ p(x|z)) or
    ``auto`` (``sample`` for binarized data, whose test images are 0/1, else ``mean``).
    No pictures (vaelab.eval draws the sample grids)."""
    check_integer("sample_quality.num_images", num_images, minimum=k + 1)
    if decode not in ("auto", "mean", "sample"):
        raise ConfigError(f"sample_quality.decode={decode} is unknown: choose auto, mean or sample")
    if decode == "auto":
        decode = "mean" if datamodule.binarize == "none" else "sample"
    datamodule.setup("test")
    test, train = datamodule.test_set, datamodule.train_set
    n = min(num_images, len(test), len(train))
    real = test.images[:n].float() / 255
    generator = torch.Generator().manual_seed(seed)
    seen = train.images[torch.randperm(len(train), generator=generator)[:n]].float() / 255
    sets = {"train": torch.bernoulli(seen, generator=generator) if train.binarize else seen}
    model.eval()
    for name, sampler in samplers.items():
        sets[name] = generate(model, sampler, n, decode, seed, batch_size)
    networks = {"domain": (classifier.body.to(model.device), "fd_domain")}
    inception = inception_network(fid, inception_weights, model.device)
    if inception is not None:
        networks["inception"] = (inception, "fid")
    metrics = {"samples/domain_classifier_acc": classifier.test_accuracy}
    for suffix, (network, fd_name) in networks.items():
        real_features = features_of(network, real, batch_size, model.device)
        for name, images in sets.items():
            fake_features = features_of(network, images, batch_size, model.device)
            for key, value in feature_metrics(real_features, fake_features, k, suffix, fd_name).items():
                metrics[f"samples/{name}/{key}"] = value
    log.info("sample quality of %s on %d images (decode=%s)", ", ".join(sets), n, decode)
    return metrics, {}
