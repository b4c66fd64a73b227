"""Probes and clusters of latents that encode the label exactly (scores 1) or not at all (chance),
and the pictures of the latent space."""

import matplotlib.colors
import numpy as np
import pytest
import torch

from vaelab.errors import ConfigError
from vaelab.representation import (
    cluster_accuracy,
    cluster_scores,
    knn_accuracy,
    latent_scatter,
    linear_probe_accuracy,
    manifold_grid,
    project_2d,
)

CLASSES = 10


def latents(n, informative, seed, dim=8):
    """Balanced labels and latents [n, dim]: with ``informative`` the class centres are 6 apart
    (one coordinate each, noise 0.3); else the latents are noise independent of the label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    z = rng.normal(scale=0.3 if informative else 1.0, size=(n, dim))
    if informative:
        z[np.arange(n), labels % dim] += 6.0 * (1 + labels // dim)  # classes 8, 9 twice as far out
    return z, labels


def test_latents_that_encode_the_label_score_one_everywhere():
    """Catches a cluster accuracy that compares cluster ids with labels without matching them
    (k-means numbers its clusters arbitrarily: about 0.1 then)."""
    train_z, train_y = latents(2000, True, 0)
    test_z, test_y = latents(1000, True, 1)
    assert linear_probe_accuracy(train_z, train_y, test_z, test_y) == 1.0
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=5) == 1.0
    assert cluster_scores(train_z, test_z, test_y, CLASSES) == pytest.approx((1.0, 1.0))


def test_latents_independent_of_the_label_score_chance():
    """Chance: 1/10 for the probes (+-0.035, 3.5 standard errors of an accuracy on 2,000 test
    images); the best matching of 10 clusters lifts the cluster accuracy a little above 1/10
    (0.129 here, below 0.15); NMI near 0 (0.008 here, below 0.02). Catches k-NN scored on its own
    training latents (each point its own neighbour: 0.36 here)."""
    train_z, train_y = latents(4000, False, 2)
    test_z, test_y = latents(2000, False, 3)
    assert linear_probe_accuracy(train_z, train_y, test_z, test_y) == pytest.approx(0.1, abs=0.035)
    assert knn_accuracy(train_z, train_y, test_z, test_y, k=5) == pytest.approx(0.1, abs=0.035)
    accuracy, nmi = cluster_scores(train_z, test_z, test_y, CLASSES)
    assert 0.1 <= accuracy < 0.15
    assert 0 <= nmi < 0.02


def test_cluster_accuracy_takes_the_best_one_to_one_matching():
    """By hand: clusters (2, 2, 0, 0, 1, 1) match labels (0, 0, 1, 1, 2, 2) exactly, and with one
    clash the best matching still gets 5 of 6. Clusters (0, 0, 1, 1, 2, 2) of labels (0, 0, 0, 0, 1, 2):
    one-to-one, only one of clusters 0 and 1 can be label 0 (3/6); a many-to-one matching (each
    cluster to its majority label, the mutant) would give 5/6."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert cluster_accuracy(labels, np.array([2, 2, 0, 0, 1, 1])) == 1.0
    assert cluster_accuracy(labels, np.array([2, 2, 0, 1, 1, 1])) == pytest.approx(5 / 6)
    assert cluster_accuracy(np.array([0, 0, 0, 0, 1, 2]), np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(3 / 6)


def test_projection_keeps_2d_latents_and_finds_the_spread_directions_of_others():
    z2 = np.random.default_rng(4).normal(size=(50, 2))
    points, axes = project_2d(z2)
    assert points is z2 and axes == ("z1", "z2")
    rng = np.random.default_rng(5)
    z5 = rng.normal(size=(500, 5)) * np.array([0.1, 5.0, 0.1, 3.0, 0.1])
    points, axes = project_2d(z5, "pca")
    spread = np.corrcoef(np.c_[points, z5[:, [1, 3]]].T)
    assert abs(spread[0, 2]) > 0.99 and abs(spread[1, 3]) > 0.99  # PC1 ~ z_2, PC2 ~ z_4
    assert axes[0].startswith("PC1 (")
    with pytest.raises(ConfigError, match="representation.projection=umap is unknown"):
        project_2d(z5, "umap")


def test_latent_scatter_draws_every_class_of_a_subsample():
    z, labels = latents(3000, True, 6)
    fig = latent_scatter(z, labels, [f"digit {c}" for c in range(CLASSES)], max_points=500)
    (ax,) = fig.axes
    assert sum(len(c.get_offsets()) for c in ax.collections) == 500
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"digit {c}" for c in range(CLASSES)]


def test_latent_scatter_colours_each_point_as_its_label_in_the_legend():
    """Two-dimensional latents (drawn as they are) whose first coordinate is the label, labels out
    of order: each point has its label's legend colour. Catches colours taken in the data's order
    rather than the label's."""
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(4), 5))
    z = np.stack([labels, np.zeros(len(labels))], 1).astype(float)
    fig = latent_scatter(z, labels, ["a", "b", "c", "d"])
    (ax,) = fig.axes
    legend = {text.get_text(): handle.get_color() for text, handle in zip(ax.get_legend().get_texts(),
                                                                        ax.get_legend().legend_handles)}
    (points,) = ax.collections
    for (x, _), colour in zip(points.get_offsets(), points.get_facecolors()):
        assert tuple(colour[:3]) == pytest.approx(matplotlib.colors.to_rgb(legend["abcd"[int(x)]]))


class LinearDecoder:
    """E[x|z] = sigmoid(z_1) in the left column of a 1 x 2 image and sigmoid(z_2) in the right one."""

    latent_dim, device = 2, torch.device("cpu")

    def decode(self, z, y=None):
        return torch.sigmoid(z).view(-1, 1, 1, 2)


def test_manifold_grid_decodes_the_prior_quantiles_z1_across_and_z2_down():
    """The grid's tile (row r, column c) decodes z = (Phi^-1(p_c), Phi^-1(p_{steps-1-r})): catches
    swapped axes, an unflipped z2 and a linear instead of a quantile grid."""
    steps = 3
    grid = manifold_grid(LinearDecoder(), steps=steps, low=0.1, high=0.9)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.1, 0.5, 0.9]))
    assert grid.shape == (3, 1 + steps * 2, 1 + steps * 3)  # tiles of 1 x 2 with padding 1
    for r in range(steps):
        for c in range(steps):
            tile = grid[0, 1 + 2 * r, 1 + 3 * c : 3 + 3 * c]
            expected = torch.sigmoid(torch.stack([quantiles[c], quantiles[steps - 1 - r]]))
            torch.testing.assert_close(tile, expected)
    with pytest.raises(ConfigError, match="needs a 2-D latent space"):
        manifold_grid(type("Three", (LinearDecoder,), {"latent_dim": 3})())
