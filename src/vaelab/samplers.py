"""Where the latents of generated images come from after training.

Every sampler has

    name        how its metrics and pictures are named (``samples/<name>/...``);
    needs_fit   whether ``fit`` must see the training set's latents first;
    fit(z [N, D]);
    sample(n, vae, seed=0) -> z [n, D] (float32, on the CPU), the same for the same seed; ``vae``
                (the ``VAE``) is what PriorSampler draws from (``vae.sample_prior``).

``PriorSampler`` draws from the model's prior p(z). ``GMMSampler`` draws from a Gaussian mixture
fitted to the latents of the training set, i.e. to the aggregate posterior q(z) = E_x q(z|x),
which a VAE's decoder has actually been trained on ("ex-post density estimation", Ghosh et al. 2020).
"""

from __future__ import annotations

import torch

from vaelab.errors import ConfigError, check_integer

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class PriorSampler:
    """z ~ p(z), the model's prior."""

    name = "prior"
    needs_fit = False

    def fit(self, z: torch.Tensor) -> None:
        """Nothing to fit."""

    def sample(self, n: int, vae, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = vae.sample_prior(n, generator)
        return z.detach().float().cpu()


class GMMSampler:
    """z ~ a K-component Gaussian mixture fitted by EM (scikit-learn's GaussianMixture) to the
    training set's latents; ``seed`` seeds the fit (k-means initialisation), the sample's own
    seed the draws. ``covariance_type`` is scikit-learn's: full, tied, diag or spherical."""

    name = "gmm"
    needs_fit = True

    def __init__(
        self,
        components: int = 10,
        covariance_type: str = "full",
        seed: int = 0,
        max_iter: int = 200,
        reg_covar: float = 1e-6,
    ):
        check_integer("sampler.components", components)
        if covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(
                f"sampler.covariance_type={covariance_type} is unknown: choose one of {', '.join(COVARIANCE_TYPES)}"
            )
        check_integer("sampler.max_iter", max_iter)
        if not reg_covar >= 0:
            raise ConfigError(f"sampler.reg_covar={reg_covar} is invalid: it must be >= 0")
        self.components = int(components)
        self.covariance_type = covariance_type
        self.seed = seed
        self.max_iter = int(max_iter)
        self.reg_covar = float(reg_covar)
        self.weights: torch.Tensor | None = None  # [K]
        self.means: torch.Tensor | None = None  # [K, D]
        self.covariances: torch.Tensor | None = None  # [K, D, D], whatever the covariance_type

    def fit(self, z: torch.Tensor) -> None:
        """Fit the mixture to latents z [N, D] (e.g. the posterior means of the training images)."""
        from sklearn.mixture import GaussianMixture

        z = torch.as_tensor(z).detach().cpu().double()
        if z.dim() != 2:
            raise ValueError(f"GMMSampler.fit needs latents [N, D], got shape {tuple(z.shape)}")
        if z.shape[0] < self.components:
            raise ConfigError(
                f"sampler.components={self.components} but only {z.shape[0]} latents to fit: "
                "lower sampler.components or fit on more images"
            )
        gmm = GaussianMixture(
            n_components=self.components,
            covariance_type=self.covariance_type,
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            random_state=self.seed,
        ).fit(z.numpy())
        k, d = gmm.means_.shape
        cov = torch.as_tensor(gmm.covariances_, dtype=torch.float64)
        if self.covariance_type == "tied":
            cov = cov.expand(k, d, d)
        elif self.covariance_type == "diag":
            cov = torch.diag_embed(cov)
        elif self.covariance_type == "spherical":
            cov = cov[:, None, None] * torch.eye(d, dtype=torch.float64)
        self.weights = torch.as_tensor(gmm.weights_, dtype=torch.float64)
        self.means = torch.as_tensor(gmm.means_, dtype=torch.float64)
        self.covariances = cov.contiguous()

    def _check_fitted(self) -> None:
        if self.weights is None:
            raise ConfigError("GMMSampler is not fitted: call fit(latents of the training set) before sampling")

    def mean(self) -> torch.Tensor:
        """The mixture's mean, sum_k w_k mu_k: [D] (float64)."""
        self._check_fitted()
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """The mixture's covariance, sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T: [D, D] (float64)."""
        self._check_fitted()
        second = (self.weights[:, None, None] * (self.covariances + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        mu = self.mean()
        return second - torch.outer(mu, mu)

    def sample(self, n: int, vae=None, seed: int = 0) -> torch.Tensor:
        """Draw a component k ~ w, then z = mu_k + L_k eps with L_k L_k^T = Sigma_k; the VAE is not used."""
        self._check_fitted()
        generator = torch.Generator().manual_seed(seed)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covariances)
        z = self.means[k] + (chol[k] @ eps.unsqueeze(-1)).squeeze(-1)
        return z.float()
