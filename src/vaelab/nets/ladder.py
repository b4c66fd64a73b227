"""Two stochastic layers with ladder-style top-down inference (Sønderby et al. 2016, "Ladder
Variational Autoencoders").

Generative model, top down:

    p(z2) = N(0, I)                                    (D2 dims)
    p(z1|z2) = N(mu_p(z2), diag sigma_p^2(z2))          (D1 dims, a small MLP on z2)
    p(x|z1)                                             (the decoder; it sees z1 only)

Inference: the encoder emits h = (mu_d1, raw logvar_d1) [B, 2*D1], the bottom-up parameters
of layer 1; an MLP on h gives those of layer 2, d2 = (mu_d2, raw logvar_d2). Then, top down,

    q(z2|x) = N(mu_d2, sigma_d2^2)
    q(z1|x, z2) = N(mu_q, sigma_q^2),  the precision-weighted combination of the bottom-up
                  (mu_d1, sigma_d1) and the top-down (mu_p(z2), sigma_p(z2)):
        sigma_q^2 = 1 / (sigma_d1^-2 + sigma_p^-2)
        mu_q = sigma_q^2 * (mu_d1 sigma_d1^-2 + mu_p sigma_p^-2).

Every raw log-variance goes through ``bound_logvar`` (``DiagonalGaussian.from_encoder_output``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vaelab.errors import ConfigError
from vaelab.latents import LatentSample
from vaelab.posteriors import DiagonalGaussian
from vaelab.priors import standard_normal_log_prob


def diagonal_gaussian_kl(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """KL(q || p) between two diagonal Gaussians, summed over the last dimension [...]:

        KL = 0.5 * sum_d [log sigma_p^2 - log sigma_q^2 + (sigma_q^2 + (mu_q - mu_p)^2) / sigma_p^2 - 1].
    """
    return 0.5 * (
        p.logvar - q.logvar + (q.logvar.exp() + (q.mu - p.mu) ** 2) / p.logvar.exp() - 1.0
    ).sum(-1)


def precision_weighted(bottom_up: DiagonalGaussian, top_down: DiagonalGaussian) -> DiagonalGaussian:
    """The product of two diagonal Gaussians, renormalized (shapes broadcast):

        sigma^2 = 1 / (sigma_d^-2 + sigma_p^-2),  mu = sigma^2 * (mu_d sigma_d^-2 + mu_p sigma_p^-2).

    Computed in log space: log sigma^2 = -logaddexp(-log sigma_d^2, -log sigma_p^2), and
    mu = w mu_d + (1 - w) mu_p with w = sigma_d^-2 / (sigma_d^-2 + sigma_p^-2)
    = sigmoid(log sigma_p^2 - log sigma_d^2), so no precision is ever formed explicitly."""
    logvar = -torch.logaddexp(-bottom_up.logvar, -top_down.logvar)
    w = torch.sigmoid(top_down.logvar - bottom_up.logvar)
    return DiagonalGaussian(w * bottom_up.mu + (1.0 - w) * top_down.mu, logvar)


def _two_layer_mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Linear - LeakyReLU - Linear (leaky rectifiers, as in the Ladder VAE paper)."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, n_out))


class LadderLayers(NamedTuple):
    """The four Gaussians of one pass and the samples drawn from them ([S, B, ...] where sampled)."""

    q_z2: DiagonalGaussian  # q(z2|x) [B, D2]
    z2: torch.Tensor  # [S, B, D2]
    p_z1: DiagonalGaussian  # p(z1|z2_s) [S, B, D1]
    bottom_up: DiagonalGaussian  # (mu_d1, sigma_d1) [B, D1]
    q_z1: DiagonalGaussian  # q(z1|x, z2_s) [S, B, D1]
    z1: torch.Tensor  # [S, B, D1]


class LadderLatents(nn.Module):
    """Two Gaussian latent layers z2 -> z1 with precision-weighted top-down inference.

    Reads the encoder output h [B, 2*D1] (``in_features``) and noise eps [S, B, D1 + D2]
    (``noise_dim``: eps[..., :D1] for z1, eps[..., D1:] for z2); hands the decoder z1."""

    def __init__(self, latent_dim: int, top_dim: int, hidden: int = 256):
        super().__init__()
        if int(latent_dim) < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {latent_dim}: pass model.latent_dim=<positive integer>")
        if int(top_dim) < 1:
            raise ConfigError(
                f"model.ladder.top_dim must be >= 1, got {top_dim}: pass model.ladder.top_dim=<positive integer>"
            )
        if int(hidden) < 1:
            raise ConfigError(f"model.ladder.hidden must be >= 1, got {hidden}: pass model.ladder.hidden=<positive integer>")
        self.latent_dim, self.top_dim = int(latent_dim), int(top_dim)
        self.in_features = 2 * self.latent_dim
        self.noise_dim = self.latent_dim + self.top_dim
        # d2 = MLP(h) -> (mu_d2, raw logvar_d2)
        self.bottom_up_net = _two_layer_mlp(self.in_features, int(hidden), 2 * self.top_dim)
        # z2 -> (mu_p, raw logvar_p) of p(z1|z2)
        self.top_down_net = _two_layer_mlp(self.top_dim, int(hidden), 2 * self.latent_dim)

    # --- the pieces ------------------------------------------------------------------
    def _check_h(self, h: torch.Tensor) -> None:
        if h.shape[-1] != self.in_features:
            raise ConfigError(
                f"the ladder reads encoder outputs of 2 * latent_dim = {self.in_features} features, got {h.shape[-1]}: "
                "give the encoder and model.ladder the same model.latent_dim"
            )

    def bottom_up(self, h: torch.Tensor) -> DiagonalGaussian:
        """(mu_d1, sigma_d1^2) of layer 1, straight from the encoder output [B, D1]."""
        self._check_h(h)
        return DiagonalGaussian.from_encoder_output(h)

    def top_posterior(self, h: torch.Tensor) -> DiagonalGaussian:
        """q(z2|x) = N(mu_d2, sigma_d2^2) with (mu_d2, raw logvar_d2) = MLP(h), [B, D2]."""
        self._check_h(h)
        return DiagonalGaussian.from_encoder_output(self.bottom_up_net(h))

    def conditional_prior(self, z2: torch.Tensor) -> DiagonalGaussian:
        """p(z1|z2) = N(mu_p(z2), sigma_p^2(z2)): [..., D2] -> [..., D1]."""
        return DiagonalGaussian.from_encoder_output(self.top_down_net(z2))

    def layers(self, h: torch.Tensor, eps: torch.Tensor) -> LadderLayers:
        """One reparameterized pass: z2 = mu_d2 + sigma_d2 eps2, then z1 = mu_q + sigma_q eps1."""
        if eps.shape[-1] != self.noise_dim:
            raise ValueError(f"eps must end in latent_dim + top_dim = {self.noise_dim} features, got {tuple(eps.shape)}")
        eps1, eps2 = eps[..., : self.latent_dim], eps[..., self.latent_dim :]
        q_z2 = self.top_posterior(h)
        z2 = q_z2.sample_from_noise(eps2)
        p_z1 = self.conditional_prior(z2)
        bottom_up = self.bottom_up(h)
        q_z1 = precision_weighted(bottom_up, p_z1)
        return LadderLayers(q_z2, z2, p_z1, bottom_up, q_z1, q_z1.sample_from_noise(eps1))

    # --- the interface the module uses ----------------------------------------------------
    def forward(self, h: torch.Tensor, eps: torch.Tensor) -> LatentSample:
        """z = z1 [S, B, D1];
        log q = log q(z2|x) + log q(z1|x, z2), log p = log N(z2; 0, I) + log p(z1|z2)  [S, B];
        layer_kl: "z1" = mean_s KL(q(z1|x, z2_s) || p(z1|z2_s)), "z2" = KL(q(z2|x) || N(0, I))  [B]."""
        t = self.layers(h, eps)
        log_q = t.q_z2.log_prob(t.z2) + t.q_z1.log_prob(t.z1)
        log_p = standard_normal_log_prob(t.z2) + t.p_z1.log_prob(t.z1)
        layer_kl = {"z1": diagonal_gaussian_kl(t.q_z1, t.p_z1).mean(0), "z2": t.q_z2.kl_standard_normal()}
        return LatentSample(z=t.z1, log_q=log_q, log_p=log_p, base=self.mean_posterior(h), layer_kl=layer_kl)

    def mean_posterior(self, h: torch.Tensor) -> DiagonalGaussian:
        """q(z1|x, z2 = E[z2|x] = mu_d2) [B, D1]: what reconstructions and interpolations decode."""
        return precision_weighted(self.bottom_up(h), self.conditional_prior(self.top_posterior(h).mu))

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z2 ~ N(0, I), z1 ~ p(z1|z2): [n, D1]. The noise [n, D1 + D2] (eps[:, :D1] for z1, as in
        ``forward``) is drawn on the CPU with ``generator``, so a seed gives the same z1 on any device."""
        param = next(self.parameters())
        eps = torch.randn(int(n), self.noise_dim, generator=generator).to(param.device, param.dtype)
        eps1, z2 = eps[:, : self.latent_dim], eps[:, self.latent_dim :]
        return self.conditional_prior(z2).sample_from_noise(eps1)
