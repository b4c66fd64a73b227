"""Decoder likelihoods p(x|z): one object per observation model, shared by every architecture.

A decoder emits ``param_channels(C)`` channels per pixel; the likelihood turns them
into a per-image negative log-likelihood (summed over all pixels and channels, in nats),
into a mean image for pictures and into draws x ~ p(x|z) (image completion by Gibbs
sampling). Inputs x are intensities in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.errors import ConfigError


def _open_uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U(0, 1) draws shaped like ``like``, kept off 0 and 1 so that their logarithms are finite."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return u.clamp(1e-6, 1 - 1e-6)


class Likelihood(nn.Module):
    """Base class: p(x|params) factorized over pixels."""

    params_per_channel: int = 1

    def probability_mass_on(self, binarized: bool) -> bool:
        """Whether p(x|z) is a probability mass over the values the data take (8-bit intensities,
        or 0 and 1 for binarized images), so that -log p(x) is a code length and bits per dimension
        mean something."""
        return False

    def param_channels(self, channels: int) -> int:
        return channels * self.params_per_channel

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, summed over all dimensions: [B]."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z], the picture to show, in [0, 1]."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ p(x|z), every pixel drawn independently: [B, C, H, W]."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """p(x|z) = prod_i p_i^x_i (1-p_i)^(1-x_i), p = sigmoid(logits), for x in [0, 1].

    For non-binary intensities this is the usual 'binary cross-entropy' of the
    classic PyTorch VAE example (not a normalized density over [0, 1]: its "NLL" is the bound
    of a continuous relaxation, not a code length); on binarized data
    (``data.binarize=dynamic|static``) it is a proper probability mass.
    """

    def probability_mass_on(self, binarized: bool) -> bool:
        return binarized

    def nll(self, params, x):
        return F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(-1)

    def mean(self, params):
        return torch.sigmoid(params)

    def sample(self, params, generator=None):
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class Gaussian(Likelihood):
    """p(x|z) = N(x; mu, sigma^2) per pixel, with a fixed sigma or a decoded one.

    -log p = 0.5 * ((x - mu)^2 / sigma^2 + log(2 pi sigma^2)), summed over pixels.
    With ``learn_scale=true`` the decoder emits (mu, log sigma) per pixel and
    log sigma is bounded to [min_log_scale, max_log_scale] with a smooth clamp.
    """

    def __init__(self, scale: float = 0.1, learn_scale: bool = False,
                 min_log_scale: float = -4.0, max_log_scale: float = 2.0):
        super().__init__()
        if not learn_scale and scale <= 0:
            raise ConfigError(f"model.likelihood.scale must be > 0, got {scale}: pass model.likelihood.scale=<positive number>")
        if min_log_scale >= max_log_scale:
            raise ConfigError(
                f"model.likelihood.min_log_scale ({min_log_scale}) must be below model.likelihood.max_log_scale ({max_log_scale})"
            )
        self.learn_scale = learn_scale
        self.scale = scale
        self.min_log_scale = min_log_scale
        self.max_log_scale = max_log_scale
        self.params_per_channel = 2 if learn_scale else 1

    def _split(self, params):
        if not self.learn_scale:
            return params, torch.full_like(params, math.log(self.scale))
        mu, raw = params.chunk(2, dim=1)
        lo, hi = self.min_log_scale, self.max_log_scale
        log_scale = lo + (hi - lo) * torch.sigmoid(raw)
        return mu, log_scale

    def nll(self, params, x):
        mu, log_scale = self._split(params)
        z2 = ((x - mu) * torch.exp(-log_scale)) ** 2
        return (0.5 * z2 + log_scale + 0.5 * math.log(2 * math.pi)).flatten(1).sum(-1)

    def mean(self, params):
        return self._split(params)[0].clamp(0, 1)

    def sample(self, params, generator=None):
        """x = mu + sigma * eps (not clamped: the density is over the real line)."""
        mu, log_scale = self._split(params)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(log_scale) * eps


class DiscretizedLogistic(Likelihood):
    """A mixture of K logistics discretized to the 256 values of 8-bit pixels (Salimans et al.
    2017, PixelCNN++; NVAE), each sub-pixel independent given z.

    With y = 2x - 1 in [-1, 1] (x = v/255), bin half-width 1/255 and, for component k,
    a = (y + 1/255 - mu_k) / s_k and b = (y - 1/255 - mu_k) / s_k,

        P(v) = sigmoid(a) - sigmoid(b),   log P(v) = log sigmoid(a) + log(1 - sigmoid(b)) + log(1 - e^(b - a)),

    the lowest bin taking all mass below (log sigmoid(a)) and the highest all mass above
    (log(1 - sigmoid(b))), so the 256 probabilities sum to 1. The log form is exact and stable
    for every mean and scale (no difference of two sigmoids is ever formed, so tiny bins do not
    underflow, and no density approximation stands in for them). log s_k is clamped at
    ``min_log_scale``; the mixture weights are softmax(logits). The decoder emits (logits, mu,
    log s) for each of the K components of each channel.
    """

    def __init__(self, components: int = 5, min_log_scale: float = -7.0):
        super().__init__()
        if components < 1:
            raise ConfigError(f"model.likelihood.components must be >= 1, got {components}")
        self.components = components
        self.min_log_scale = min_log_scale
        self.params_per_channel = 3 * components

    def probability_mass_on(self, binarized: bool) -> bool:
        return True  # over the 256 values of 8-bit pixels, binarized ones (0 and 255) included

    def _split(self, params: torch.Tensor):
        b, _, h, w = params.shape
        p = params.view(b, -1, 3, self.components, h, w)  # [B, C, 3, K, H, W]
        return p[:, :, 0], p[:, :, 1], p[:, :, 2].clamp(min=self.min_log_scale)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(x) per sub-pixel, [B, C, H, W], for x on the grid v/255."""
        logits, means, log_scales = self._split(params)
        y = (2 * x - 1).unsqueeze(2)  # [B, C, 1, H, W]
        inv_s = torch.exp(-log_scales)
        a = inv_s * (y - means + 1 / 255)
        b = inv_s * (y - means - 1 / 255)
        log_below_a = F.logsigmoid(a)  # log P(value < upper edge): the lowest bin's mass
        log_above_b = F.logsigmoid(-b)  # log P(value > lower edge): the highest bin's mass
        log_inner = log_below_a + log_above_b + torch.log(-torch.expm1(-2 / 255 * inv_s))  # (b - a = -2 / (255 s))
        log_bins = torch.where(y < -0.999, log_below_a, torch.where(y > 0.999, log_above_b, log_inner))
        return torch.logsumexp(log_bins + F.log_softmax(logits, dim=2), dim=2)

    def nll(self, params, x):
        return -self.log_prob(params, x).flatten(1).sum(-1)

    def mean(self, params):
        logits, means, _ = self._split(params)
        y = (torch.softmax(logits, dim=2) * means).sum(2)
        return ((y + 1) / 2).clamp(0, 1)

    def sample(self, params, generator=None):
        """A component k ~ softmax(logits) (the Gumbel-max trick), then y = mu_k + s_k log(u / (1 - u)),
        u ~ U(0, 1), a logistic draw; y is clamped to [-1, 1] (the edge bins take the tails) and
        rounded to the nearest of the 256 values."""
        logits, means, log_scales = self._split(params)
        gumbel = -torch.log(-torch.log(_open_uniform(logits, generator)))
        k = (logits + gumbel).argmax(2, keepdim=True)  # [B, C, 1, H, W]
        mu, log_s = means.gather(2, k).squeeze(2), log_scales.gather(2, k).squeeze(2)
        u = _open_uniform(mu, generator)
        y = (mu + torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))).clamp(-1, 1)
        return torch.round((y + 1) / 2 * 255) / 255


def reports_bits_per_dim(likelihood: Likelihood, binarize: str) -> bool:
    """Whether a run with this likelihood and ``data.binarize`` setting reports bits per dimension."""
    return likelihood.probability_mass_on(binarize != "none")
