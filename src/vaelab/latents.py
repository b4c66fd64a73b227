"""What one pass through the latent layer produces: samples z and their densities.

Every latent structure (a Gaussian posterior, a flow posterior, a two-layer ladder) hands the
module a ``LatentSample``; the objectives and the IWAE evaluation need nothing else:

    log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vaelab.posteriors import DiagonalGaussian


@dataclass
class LatentSample:
    """S samples per image of the latents, B images.

    - ``z`` [S, B, D]: what the decoder sees;
    - ``log_q`` [S, B]: log q(z|x), flow log-determinants included;
    - ``log_p`` [S, B]: log p(z) under the model's prior;
    - ``base``: the Gaussian q0(z|x) the samples start from (its mu and logvar feed the latent
      diagnostics and beta-TC);
    - ``kl_per_dim`` [B, D]: KL(q || p) per dimension in closed form, where it exists (Gaussian
      posterior, standard-normal prior), else None;
    - ``layer_kl``: per-layer KL [B] of a hierarchical model, by name (logged as ``kl_<name>``);
      they sum to the model's KL.
    """

    z: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    base: DiagonalGaussian
    kl_per_dim: torch.Tensor | None = None
    layer_kl: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per image [B]: the closed form, else the sum of the per-layer KLs,
        else the Monte-Carlo estimate mean_s [log q(z_s|x) - log p(z_s)]."""
        if self.kl_per_dim is not None:
            return self.kl_per_dim.sum(-1)
        if self.layer_kl:
            return sum(self.layer_kl.values())
        return (self.log_q - self.log_p).mean(0)

    @property
    def log_weights(self) -> torch.Tensor:
        """log p(z_s) - log q(z_s|x) [S, B]; add log p(x|z_s) for the importance weights."""
        return self.log_p - self.log_q
