"""Approximate posteriors q(z|x)."""

from __future__ import annotations

import math

import torch


class DiagonalGaussian:
    """q(z|x) = N(z; mu, diag(exp(logvar))).

    The encoder's raw log-variance is squashed smoothly into
    ``[LOGVAR_MIN, LOGVAR_MAX]`` so that exp() can neither overflow nor give a
    zero variance (whose log-density and KL would be infinite).
    """

    LOGVAR_MIN = -12.0
    LOGVAR_MAX = 8.0

    def __init__(self, mu: torch.Tensor, raw_logvar: torch.Tensor):
        self.mu = mu
        half_range = (self.LOGVAR_MAX - self.LOGVAR_MIN) / 2
        centre = (self.LOGVAR_MAX + self.LOGVAR_MIN) / 2
        # centre + half_range * tanh((v - centre) / half_range) is ~identity near the centre.
        self.logvar = centre + half_range * torch.tanh((raw_logvar - centre) / half_range)

    @classmethod
    def from_encoder_output(cls, h: torch.Tensor) -> DiagonalGaussian:
        """Split an encoder output [B, 2*D] into (mu, raw log-variance)."""
        mu, raw_logvar = h.chunk(2, dim=-1)
        return cls(mu, raw_logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized sample z = mu + sigma * eps, eps ~ N(0, I); gradients reach mu and sigma."""
        eps = torch.randn(self.mu.shape, device=self.mu.device, dtype=self.mu.dtype, generator=generator)
        return self.mu + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dimensions: [B]."""
        return -0.5 * (((z - self.mu) ** 2) / self.logvar.exp() + self.logvar + math.log(2 * math.pi)).sum(-1)

    def kl_standard_normal_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension: 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2), [B, D]."""
        return 0.5 * (self.mu**2 + self.logvar.exp() - 1.0 - self.logvar)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent dimensions: [B]."""
        return self.kl_standard_normal_per_dim().sum(-1)
