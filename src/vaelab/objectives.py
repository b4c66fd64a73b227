"""Training objectives. Each returns per-image terms in nats, averaged over the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vaelab.errors import ConfigError


@dataclass
class Terms:
    """Batch-mean terms: ``loss`` is what is minimized; ``nelbo = recon + kl`` whatever the weights."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl


class ELBO:
    """beta-weighted negative ELBO (Higgins et al. 2017; beta=1 is Kingma & Welling 2014).

        loss = E_q[-log p(x|z)] + beta * KL(q(z|x) || N(0, I))

    with the expectation estimated by one reparameterized sample and the KL in
    closed form. Both terms are summed over dimensions and averaged over the
    batch, so they share one reduction: nats per image.
    """

    def __init__(self, beta: float = 1.0):
        if beta < 0:
            raise ConfigError(f"objective.beta must be >= 0, got {beta}: pass objective.beta=<non-negative number>")
        self.beta = float(beta)

    def __call__(self, recon_nll: torch.Tensor, kl: torch.Tensor) -> Terms:
        recon, kl = recon_nll.mean(), kl.mean()
        return Terms(loss=recon + self.beta * kl, recon=recon, kl=kl)
