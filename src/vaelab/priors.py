"""Priors p(z).

Every prior is a ``torch.nn.Module`` with

    standard_normal   True only for ``StandardNormal`` (the closed-form KL is then valid);
    log_prob(z [..., D], encode=None) -> log p(z) [...];
    sample(n, encode=None, generator=None) -> z [n, D].

``encode`` is the model's Gaussian encoder, images [K, C, H, W] in [0, 1] -> ``DiagonalGaussian``
with mu, logvar [K, D]; only ``VampPrior`` uses it. Samples are drawn on the CPU with
``generator`` (reproducible) and moved to the prior's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vaelab.errors import ConfigError, check_integer
from vaelab.posteriors import LOG_2PI, DiagonalGaussian

Encode = Callable[[torch.Tensor], DiagonalGaussian]


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


def mixture_log_prob(z: torch.Tensor, log_weights: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     max_elements: int = 1 << 24) -> torch.Tensor:
    """log sum_k w_k N(z; mu_k, diag(exp(logvar_k))): z [..., D], log_weights [K], mu and logvar [K, D] -> [...].

    (z - mu_k)^2 is formed explicitly (the expanded z^2 - 2 z mu + mu^2 loses float32 precision
    for small variances), for at most ``max_elements`` numbers [rows, K, D] at a time, so that
    thousands of importance samples against hundreds of components fit in memory."""
    k, d = mu.shape
    flat = z.reshape(-1, d)
    inv_var, log_norm = torch.exp(-logvar), -0.5 * (logvar + LOG_2PI).sum(-1) + log_weights  # [K, D], [K]
    rows = max(1, max_elements // (k * d))
    out = [
        torch.logsumexp(log_norm - 0.5 * ((chunk.unsqueeze(-2) - mu) ** 2 * inv_var).sum(-1), dim=-1)
        for chunk in flat.split(rows)
    ]
    return torch.cat(out).reshape(z.shape[:-1])


def _sample_mixture(
    n: int, weights: torch.Tensor, mu: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw a component k ~ weights, then z = mu_k + std_k * eps; the draws on the CPU."""
    k = torch.multinomial(weights.detach().float().cpu(), n, replacement=True, generator=generator)
    eps = torch.randn(n, mu.shape[-1], generator=generator).to(mu)
    k = k.to(mu.device)
    return mu[k] + std[k] * eps


class StandardNormal(torch.nn.Module):
    """p(z) = N(z; 0, I)."""

    standard_normal = True

    def __init__(self, latent_dim: int):
        super().__init__()
        check_integer("model.prior.latent_dim", latent_dim)
        self.latent_dim = latent_dim
        # no parameters: an empty buffer tells which device and dtype samples go to
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def log_prob(self, z: torch.Tensor, encode: Encode | None = None) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator).to(self.anchor)


class MixtureOfGaussians(torch.nn.Module):
    """A learnable mixture of K diagonal Gaussians:

        p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)),  pi = softmax(logits),
        log p(z) = logsumexp_k [log pi_k + log N(z; m_k, diag(s_k^2))].

    The means start spread out, m_k ~ N(0, init_scale^2 I), the log-variances at init_logvar,
    the weights equal. The log-variances are clamped to [-12, 8] where they are used (as the
    posterior's are bounded) so the density stays finite."""

    standard_normal = False
    LOGVAR_MIN = DiagonalGaussian.LOGVAR_MIN
    LOGVAR_MAX = DiagonalGaussian.LOGVAR_MAX

    def __init__(self, latent_dim: int, components: int = 10, init_scale: float = 1.0, init_logvar: float = 0.0):
        super().__init__()
        check_integer("model.prior.latent_dim", latent_dim)
        check_integer("model.prior.components", components)
        if not init_scale >= 0:
            raise ConfigError(f"model.prior.init_scale={init_scale} is invalid: the spread of the initial means must be >= 0")
        self.latent_dim = latent_dim
        self.means = torch.nn.Parameter(init_scale * torch.randn(components, latent_dim))
        self.raw_logvar = torch.nn.Parameter(torch.full((components, latent_dim), float(init_logvar)))
        self.logits = torch.nn.Parameter(torch.zeros(components))

    @property
    def logvar(self) -> torch.Tensor:
        return self.raw_logvar.clamp(self.LOGVAR_MIN, self.LOGVAR_MAX)

    def log_prob(self, z: torch.Tensor, encode: Encode | None = None) -> torch.Tensor:
        return mixture_log_prob(z, torch.log_softmax(self.logits, -1), self.means, self.logvar)

    def sample(self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return _sample_mixture(n, torch.softmax(self.logits, -1), self.means, torch.exp(0.5 * self.logvar), generator)


class VampPrior(torch.nn.Module):
    """The VampPrior (Tomczak & Welling 2018): the encoder's posterior averaged over K learnable
    pseudo-inputs u_k of the images' shape [C, H, W],

        p(z) = (1/K) sum_k q0(z | u_k),
        log p(z) = logsumexp_k log q0(z | u_k) - log K.

    The pseudo-inputs are hardtanh(raw) in [0, 1] (as in the paper). Initialisation: raw ~
    N(init_mean, init_std^2) elementwise (the paper's MNIST choice is 0.05, 0.01), or set them
    to images (e.g. a random batch of training images) with ``set_pseudo_inputs``."""

    standard_normal = False

    def __init__(
        self, shape, latent_dim: int, components: int = 500, init_mean: float = 0.05, init_std: float = 0.01
    ):
        super().__init__()
        check_integer("model.prior.latent_dim", latent_dim)
        check_integer("model.prior.components", components)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"model.prior.shape={list(shape)} is invalid: it must be the images' [C, H, W] (data.shape)")
        if not init_std >= 0:
            raise ConfigError(f"model.prior.init_std={init_std} is invalid: it must be >= 0")
        self.latent_dim = latent_dim
        self.shape = shape
        self.raw_pseudo_inputs = torch.nn.Parameter(init_mean + init_std * torch.randn(components, *shape))

    @property
    def num_components(self) -> int:
        return self.raw_pseudo_inputs.shape[0]

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """u [K, C, H, W] in [0, 1]."""
        return torch.nn.functional.hardtanh(self.raw_pseudo_inputs, 0.0, 1.0)

    @torch.no_grad()
    def set_pseudo_inputs(self, images: torch.Tensor) -> None:
        """Start the pseudo-inputs at K images [K, C, H, W] in [0, 1] (e.g. training images)."""
        if tuple(images.shape) != tuple(self.raw_pseudo_inputs.shape):
            raise ValueError(f"need {tuple(self.raw_pseudo_inputs.shape)} images, got {tuple(images.shape)}")
        self.raw_pseudo_inputs.copy_(images.clamp(0, 1))

    def pseudo_posteriors(self, encode: Encode | None) -> DiagonalGaussian:
        """q0(z | u_k): mu, logvar [K, D]."""
        if encode is None:
            raise ValueError("VampPrior needs the model's encoder: pass encode=(images -> DiagonalGaussian)")
        return encode(self.pseudo_inputs)

    def log_prob(self, z: torch.Tensor, encode: Encode | None = None) -> torch.Tensor:
        q = self.pseudo_posteriors(encode)
        k = q.mu.shape[0]
        log_weights = torch.full((k,), -math.log(k), dtype=q.mu.dtype, device=q.mu.device)
        return mixture_log_prob(z, log_weights, q.mu, q.logvar)

    def sample(self, n: int, encode: Encode | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        q = self.pseudo_posteriors(encode)
        weights = torch.ones(q.mu.shape[0])
        return _sample_mixture(n, weights, q.mu, q.std, generator)
