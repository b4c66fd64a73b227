"""Training objectives (the ``objective`` config group).

Each objective receives, for a batch of B images and S samples z_s ~ q(z|x) per image:
the posterior q, the samples z [S, B, D], log p(x|z_s) [S, B] and the optimizer step, and
returns batch-mean terms in nats per image. ``recon`` (= -E_q log p(x|z)) and ``kl`` (the
closed-form KL(q || N(0, I))) are reported the same way by every objective, so that
``nelbo = recon + kl`` is always the negative ELBO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vaelab.errors import ConfigError
from vaelab.posteriors import DiagonalGaussian
from vaelab.priors import standard_normal_log_prob
from vaelab.schedules import Constant, KLSchedule


@dataclass
class Terms:
    """Batch-mean terms: ``loss`` is what is minimized; ``nelbo = recon + kl`` whatever the weights."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl


def log_importance_weights(q: DiagonalGaussian, z: torch.Tensor, log_px: torch.Tensor) -> torch.Tensor:
    """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x), [S, B]."""
    return log_px + standard_normal_log_prob(z) - q.log_prob(z)


class Objective:
    samples = 1  # z samples per image

    def __init__(self, kl_schedule: KLSchedule | None = None):
        self.kl_schedule = kl_schedule or Constant()

    def _require_constant_schedule(self, name: str) -> None:
        if not self.kl_schedule.constant:
            raise ConfigError(f"objective={name} takes no KL schedule: use kl_schedule=constant (or objective=elbo)")

    @staticmethod
    def reported(q: DiagonalGaussian, log_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -log_px.mean(), q.kl_standard_normal().mean()


class ELBO(Objective):
    """beta-weighted negative ELBO (Higgins et al. 2017; beta=1 is Kingma & Welling 2014).

        loss = E_q[-log p(x|z)] + beta * KL term,

    the KL term being the closed-form KL(q(z|x) || N(0, I)) passed through the KL schedule
    (plain sum over dimensions with ``kl_schedule=constant``). Both terms are summed over
    dimensions and averaged over the batch: one reduction, nats per image.
    """

    def __init__(self, beta: float = 1.0, kl_schedule: KLSchedule | None = None):
        super().__init__(kl_schedule)
        if beta < 0:
            raise ConfigError(f"objective.beta must be >= 0, got {beta}: pass objective.beta=<non-negative number>")
        self.beta = float(beta)

    def __call__(self, q, z, log_px, step: int = 0) -> Terms:
        recon, kl = self.reported(q, log_px)
        kl_term = self.kl_schedule(q.kl_standard_normal_per_dim().mean(0), step)
        return Terms(loss=recon + self.beta * kl_term, recon=recon, kl=kl)


class IWAE(Objective):
    """Importance-weighted bound (Burda et al. 2016) with k samples:

        L_k = E[log (1/k) sum_s w_s],  w_s = p(x, z_s) / q(z_s|x).

    Its gradient is sum_s w~_s grad log w_s with the normalized weights w~ = softmax(log w)
    held constant; the loss is built as that surrogate (weights detached), with its value
    replaced by -L_k so that the logged loss is the bound itself.
    """

    def __init__(self, k: int = 5, kl_schedule: KLSchedule | None = None):
        super().__init__(kl_schedule)
        if k < 1:
            raise ConfigError(f"objective.k must be >= 1, got {k}")
        self._require_constant_schedule("iwae")
        self.samples = int(k)

    def __call__(self, q, z, log_px, step: int = 0) -> Terms:
        log_w = log_importance_weights(q, z, log_px)
        bound = (torch.logsumexp(log_w, 0) - math.log(self.samples)).mean()
        surrogate = -(torch.softmax(log_w, 0).detach() * log_w).sum(0).mean()
        loss = surrogate + (-bound - surrogate).detach()
        recon, kl = self.reported(q, log_px)
        return Terms(loss=loss, recon=recon, kl=kl)


class BetaTC(Objective):
    """beta-TC-VAE (Chen et al. 2018): the KL split into index-code MI, total correlation and
    dimension-wise KL, with the TC weighted by beta:

        loss = recon + alpha * I(x; z) + beta * TC(z) + gamma * sum_d KL(q(z_d) || p(z_d)),

    q(z) and q(z_d) estimated on the minibatch with minibatch-stratified sampling over a
    training set of ``dataset_size`` images (set by the module from the data).
    """

    def __init__(self, beta: float = 6.0, alpha: float = 1.0, gamma: float = 1.0,
                 kl_schedule: KLSchedule | None = None, dataset_size: int | None = None):
        super().__init__(kl_schedule)
        if min(alpha, beta, gamma) < 0:
            raise ConfigError("objective.alpha, beta and gamma must be >= 0")
        self._require_constant_schedule("beta_tc")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.dataset_size = dataset_size

    def log_stratified_weights(self, batch: int, device) -> torch.Tensor:
        """log of the minibatch-stratified importance weights [B, B] (Chen et al. 2018, appendix C.2)."""
        n, m = self.dataset_size, batch - 1
        weights = torch.full((batch, batch), 1.0 / m, device=device)
        weights.view(-1)[:: m + 1] = 1.0 / n
        weights.view(-1)[1 :: m + 1] = (n - m) / (n * m)
        weights[m - 1, 0] = (n - m) / (n * m)
        return weights.log()

    def __call__(self, q, z, log_px, step: int = 0) -> Terms:
        if self.dataset_size is None:
            raise ConfigError("objective=beta_tc needs the training-set size (objective.dataset_size)")
        z1 = z[0]  # [B, D]
        batch = len(z1)
        if batch < 2:
            raise ConfigError("objective=beta_tc needs batches of at least 2 images")
        # log q(z_i | x_j) per dimension: [B (z), B (x), D]
        mu, logvar = q.mu.unsqueeze(0), q.logvar.unsqueeze(0)
        log_q_dims = -0.5 * ((z1.unsqueeze(1) - mu) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))
        log_iw = self.log_stratified_weights(batch, z1.device)
        log_qz = torch.logsumexp(log_iw + log_q_dims.sum(2), dim=1)
        log_prod_qzd = torch.logsumexp(log_iw.unsqueeze(-1) + log_q_dims, dim=1).sum(1)
        log_qz_given_x = q.log_prob(z1)
        log_pz = standard_normal_log_prob(z1)
        mi = (log_qz_given_x - log_qz).mean()
        tc = (log_qz - log_prod_qzd).mean()
        dim_kl = (log_prod_qzd - log_pz).mean()
        recon, kl = self.reported(q, log_px)
        return Terms(loss=recon + self.alpha * mi + self.beta * tc + self.gamma * dim_kl, recon=recon, kl=kl)
