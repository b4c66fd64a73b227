"""Approximate posteriors q(z|x)."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def bound_logvar(raw: torch.Tensor, low: float = -12.0, high: float = 8.0) -> torch.Tensor:
    """Squash a raw log-variance smoothly into [low, high]: centre + half * tanh((raw - centre) / half).

    Near the centre it is almost the identity; it keeps exp() from overflowing and the
    variance from reaching zero (where log q and the KL would be infinite)."""
    half, centre = (high - low) / 2, (high + low) / 2
    return centre + half * torch.tanh((raw - centre) / half)


class DiagonalGaussian:
    """q(z|x) = N(z; mu, diag(exp(logvar))), mu and logvar of shape [B, D]."""

    LOGVAR_MIN = -12.0
    LOGVAR_MAX = 8.0

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu = mu
        self.logvar = logvar

    @classmethod
    def from_encoder_output(cls, h: torch.Tensor) -> DiagonalGaussian:
        """Split an encoder output [B, 2*D] into mu and a bounded log-variance."""
        mu, raw_logvar = h.chunk(2, dim=-1)
        return cls(mu, bound_logvar(raw_logvar, cls.LOGVAR_MIN, cls.LOGVAR_MAX))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, num_samples: int | None = None) -> torch.Tensor:
        """Reparameterized sample z = mu + sigma * eps, eps ~ N(0, I): [B, D], or [S, B, D]."""
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        return self.sample_from_noise(torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype))

    def sample_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        return self.mu + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dimensions; z [..., B, D] -> [..., B]."""
        return -0.5 * (((z - self.mu) ** 2) / self.logvar.exp() + self.logvar + LOG_2PI).sum(-1)

    def kl_standard_normal_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension: 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2), [B, D]."""
        return 0.5 * (self.mu**2 + self.logvar.exp() - 1.0 - self.logvar)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent dimensions: [B]."""
        return self.kl_standard_normal_per_dim().sum(-1)

