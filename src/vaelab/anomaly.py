"""Anomaly detection with a trained VAE: score images by how unlikely the model finds them.

Scores per image: the negative ELBO (one sample) and the IWAE estimate of -log p(x). Images
from outside the training distribution (another dataset, or a class held out of training)
should score higher; the AUROC (torchmetrics) says how well each score separates them
(1 = perfectly, 0.5 = chance).
"""

from __future__ import annotations

import torch
from torchmetrics.classification import BinaryAUROC


@torch.no_grad()
def score_images(vae, batches, iw_samples: int, iw_chunk: int) -> dict[str, torch.Tensor]:
    """{"nelbo": [N], "nll_iw": [N]} for every image of ``batches`` (iterable of (x, y)), ``vae`` a ``VAE``."""
    nelbo, nll_iw = [], []
    for x, y in batches:
        x, y = x.to(vae.device), y.to(vae.device)
        nelbo.append(vae.elbo_terms(x, y).nelbo.cpu())
        nll_iw.append((-vae.log_likelihood(x, iw_samples, y, iw_chunk)).cpu())
    return {"nelbo": torch.cat(nelbo), "nll_iw": torch.cat(nll_iw)}


def auroc(inlier_scores: torch.Tensor, outlier_scores: torch.Tensor) -> float:
    """Area under the ROC curve for telling outliers (positives) by their higher score.

    The scores are first mapped to [0, 1] by a min-max rescaling in float64 (which keeps their
    order, so the AUROC): torchmetrics would otherwise read values outside [0, 1] as logits and
    squash them with a sigmoid, which saturates at scores of a few hundred nats."""
    scores = torch.cat([inlier_scores, outlier_scores]).double()
    scores = (scores - scores.min()) / (scores.max() - scores.min()).clamp(min=1e-300)
    target = torch.cat([torch.zeros(len(inlier_scores)), torch.ones(len(outlier_scores))]).long()
    return float(BinaryAUROC()(scores, target))


def histogram_figure(inlier: torch.Tensor, outlier: torch.Tensor, name: str, labels: tuple[str, str]):
    """Overlaid histograms of the two groups' scores (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = torch.quantile(torch.cat([inlier, outlier]), 0.99).item()
    bins = torch.linspace(min(inlier.min(), outlier.min()).item(), top, 60).numpy()
    ax.hist(inlier.numpy(), bins=bins, alpha=0.6, density=True, label=labels[0])
    ax.hist(outlier.numpy(), bins=bins, alpha=0.6, density=True, label=labels[1])
    ax.set_xlabel(f"{name} (nats)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return fig
