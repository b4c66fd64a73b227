"""What the latent space knows about the labels: probes and clusters of the posterior means mu(x),
and pictures of the latent space.

- ``repr/linear_acc``: a multinomial logistic regression (scikit-learn, on standardized means)
  fitted to the training images' means and labels, scored on the test images;
- ``repr/knn_acc``: the majority label of the k nearest training means (Euclidean), on the test images;
- ``repr/cluster_acc``: k-means with K = the number of classes, fitted to the training means, the
  test means assigned to their nearest centre; the accuracy under the one-to-one matching of
  clusters to classes that maximizes it (the Hungarian algorithm, scipy's linear_sum_assignment):
  max over matchings m of (1/N) sum_n [m(cluster_n) = label_n];
- ``repr/nmi``: the normalized mutual information I(cluster; label) / mean(H(cluster), H(label))
  (scikit-learn's arithmetic normalization), on the test images.

For a conditional model the encoder is given the true label (q(z|x, y)), so these measure how
much of the label the latents still carry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.utils import make_grid

from vaelab.data.device_loader import DeviceBatches
from vaelab.data.sources import CLASS_NAMES
from vaelab.errors import ConfigError, check_integer

log = logging.getLogger("vaelab")
PROJECTIONS = ("pca", "tsne")


@torch.no_grad()
def posterior_means(model, dataset, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior means mu(x) [N, D] (float32, CPU) of a split's images and their labels [N]
    (conditional models: q(z|x, y) given the true label; dynamically binarized images drawn with ``seed``)."""
    batches = DeviceBatches(dataset.images, dataset.labels, batch_size, shuffle=False, seed=seed,
                            binarize=dataset.binarize)
    means = [model.encode(x.to(model.device), y.to(model.device) if model.conditional else None).mu.float().cpu()
             for x, y in batches]
    return torch.cat(means), dataset.labels.clone()


def linear_probe_accuracy(train_z, train_y, test_z, test_y, seed: int = 0, max_iter: int = 1000) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    return float(probe.fit(train_z, train_y).score(test_z, test_y))


def knn_accuracy(train_z, train_y, test_z, test_y, k: int = 5) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    check_integer("representation.knn_k", k)
    return float(KNeighborsClassifier(n_neighbors=k).fit(train_z, train_y).score(test_z, test_y))


def cluster_accuracy(labels, clusters) -> float:
    """The accuracy of the cluster ids under the best one-to-one matching of clusters to labels."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    counts = contingency_matrix(labels, clusters)  # [classes, clusters]
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


def cluster_scores(train_z, test_z, test_y, num_clusters: int, seed: int = 0) -> tuple[float, float]:
    """(cluster accuracy, NMI) of k-means (``num_clusters``, fitted to train_z) on the test latents."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    clusters = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed).fit(train_z).predict(test_z)
    return cluster_accuracy(test_y, clusters), float(normalized_mutual_info_score(test_y, clusters))


def project_2d(latents: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """Latents [N, D] as 2-D points and the axes' names: the latents themselves for D = 2, the
    latent against zero for D = 1, else the first two principal components (``pca``) or t-SNE."""
    if method not in PROJECTIONS:
        raise ConfigError(f"representation.projection={method} is unknown: choose pca or tsne")
    d = latents.shape[1]
    if d == 2:
        return latents, ("z1", "z2")
    if d == 1:
        return np.concatenate([latents, np.zeros_like(latents)], 1), ("z1", "")
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca").fit_transform(latents), ("t-SNE 1", "t-SNE 2")
    from sklearn.decomposition import PCA

    with np.errstate(invalid="ignore"):  # identical latents (a collapsed posterior) have no variance to share
        pca = PCA(n_components=2, random_state=seed).fit(latents)
    shares = pca.explained_variance_ratio_
    if not np.isfinite(shares).all():
        return pca.transform(latents), ("PC1", "PC2")
    return pca.transform(latents), (f"PC1 ({shares[0]:.0%} of the variance)", f"PC2 ({shares[1]:.0%})")


def latent_scatter(latents, labels, class_names: Sequence[str] | None = None, max_points: int = 5000,
                   method: str = "pca", seed: int = 0):
    """A matplotlib figure of the latents [N, D] in 2-D (``project_2d``) coloured by label [N], for
    at most ``max_points`` of them (a random subset drawn with ``seed``); fast enough with PCA to
    draw at every validation. ``class_names[c]`` names label c in the legend (default: c). Latents
    that are not finite (a diverged model's) are left out, and said so in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    latents, labels = np.asarray(latents, dtype=np.float64), np.asarray(labels)
    finite = np.isfinite(latents).all(1)
    left_out = int((~finite).sum())
    latents, labels = latents[finite], labels[finite]
    if len(latents) > max_points:
        keep = np.random.default_rng(seed).choice(len(latents), max_points, replace=False)
        latents, labels = latents[keep], labels[keep]
    points, (xlabel, ylabel) = project_2d(latents, method, seed) if len(latents) > 2 else (latents[:, :2], ("", ""))
    # drawn at every epoch, so built for drawing speed: fixed margins, the legend beside the axes
    # (tight_layout and the legend's "best" place, a search over the points, took most of the
    # figure's time), one collection of points, five ticks a side, the title as figure text
    fig, ax = plt.subplots(figsize=(6.8, 5.5))
    fig.subplots_adjust(left=0.11, right=0.8, bottom=0.09, top=0.93)
    classes, index = np.unique(labels, return_inverse=True)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colors = [cmap(i % cmap.N) for i in range(len(classes))]
    ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6, c=np.asarray(colors)[index.reshape(-1)])
    if len(points):
        ax.legend(handles=[Line2D([], [], linestyle="", marker="o", markersize=4, alpha=0.6, color=color,
                                  label=class_names[c] if class_names is not None else str(c))
                           for c, color in zip(classes, colors)],
                  fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.locator_params(nbins=5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.text(0.455, 0.965, f"posterior means of {len(points)} images, coloured by label"
             + (f" ({left_out} not finite, left out)" if left_out else ""), ha="center", va="center", fontsize=10)
    return fig


@torch.no_grad()
def manifold_grid(model, steps: int = 20, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """The decoded manifold of a 2-D latent space (Kingma & Welling 2014, Fig. 4): E[x|z] for z on
    a ``steps`` x ``steps`` grid of standard-normal quantiles Phi^-1(p), p from ``low`` to ``high``
    (z1 along the columns, z2 decreasing down the rows), as one image [C, H', W']."""
    if model.latent_dim != 2:
        raise ConfigError(f"the manifold grid needs a 2-D latent space; this model has {model.latent_dim}")
    check_integer("representation.manifold_steps", steps, minimum=2)
    p = torch.linspace(low, high, steps, dtype=torch.float64)
    q = torch.distributions.Normal(0.0, 1.0).icdf(p).float()
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")  # z1 varies along a row, z2 down the column
    z = torch.stack([z1.flatten(), z2.flatten()], 1).to(model.device)
    return make_grid(model.decode(z).float().cpu(), nrow=steps, padding=1, pad_value=0.5)


def evaluate(model, datamodule, *, knn_k: int = 5, projection: str = "pca", scatter_points: int = 5000,
             manifold_steps: int = 20, batch_size: int = 500,
             seed: int = 0) -> tuple[dict[str, float], dict[str, object]]:
    """``repr/linear_acc``, ``repr/knn_acc``, ``repr/cluster_acc`` and ``repr/nmi`` from the posterior
    means of the training images (fitting) and the test images (scoring), with K = the number of
    classes among the training labels. Pictures: ``latent_space`` (a matplotlib figure of the test
    means, ``latent_scatter``) and, for a 2-D latent space of an unconditional model,
    ``latent_manifold`` (``manifold_grid``)."""
    datamodule.setup("test")
    model.eval()
    train_z, train_y = posterior_means(model, datamodule.train_set, batch_size, seed)
    test_z, test_y = posterior_means(model, datamodule.test_set, batch_size, seed)
    train_z, train_y, test_z, test_y = (t.numpy() for t in (train_z, train_y, test_z, test_y))
    cluster_acc, nmi = cluster_scores(train_z, test_z, test_y, len(np.unique(train_y)), seed)
    metrics = {
        "repr/linear_acc": linear_probe_accuracy(train_z, train_y, test_z, test_y, seed),
        "repr/knn_acc": knn_accuracy(train_z, train_y, test_z, test_y, knn_k),
        "repr/cluster_acc": cluster_acc,
        "repr/nmi": nmi,
    }
    names = CLASS_NAMES.get(datamodule.name)
    pictures: dict[str, object] = {"latent_space": latent_scatter(test_z, test_y, names, scatter_points, projection, seed)}
    if model.latent_dim == 2 and not model.conditional:
        pictures["latent_manifold"] = manifold_grid(model, manifold_steps)
    return metrics, pictures
