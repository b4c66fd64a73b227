"""``VAE``: one variational autoencoder and its maths, a plain ``torch.nn.Module``.

It holds the encoder, the latent structure (a posterior family, a prior, or a two-layer ladder),
the decoder, the likelihood p(x|z) and, for the semi-supervised M2 model, the classifier q(y|x).
It needs no trainer: load one with ``vaelab.load(path)`` and call

    encode(x)               the Gaussian posterior over the decoder's latents (``.mean``, ``.std``)
    decode(z)               E[x|z], images in [0, 1]
    sample(n)               n images generated from the prior
    reconstruct(x)          E[x | z = E[z|x]]
    interpolate(x1, x2, n)  images decoded along the straight line between two posterior means
    elbo_terms(x)           the negative ELBO per image, its reconstruction and KL terms
    log_likelihood(x, k)    the importance-weighted estimate of log p(x) with k samples

(conditional models take the labels ``y`` as well). Every pass through the latents yields a
``LatentSample`` (z, log q(z|x), log p(z), the KL), which is all the objectives and the IWAE
estimate read:

    log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x),   log p(x) ~ logmeanexp_s log w_s.

The encoder and decoder arrive as factories (Hydra ``_partial_`` configs, or any callable) that
the VAE completes with what the latent structure and likelihood need: the encoder's extra
outputs (a flow's context), the label size of a conditional model, the likelihood's parameters
per pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.errors import ConfigError
from vaelab.latents import LatentSample
from vaelab.likelihoods import Likelihood
from vaelab.nets import checked_shape
from vaelab.objectives import M2, log_importance_weights
from vaelab.posteriors import DiagonalGaussian, GaussianPosterior
from vaelab.priors import StandardNormal, VampPrior


@dataclass
class ELBOTerms:
    """The negative ELBO of each image [B] (nats) and its two terms, nelbo = recon + kl; for the
    two-layer model also each layer's KL (they sum to ``kl``); ``posterior``: the Gaussian the
    sample came from (``VAE.encode``'s), None for M2 (whose bound mixes the classes')."""

    recon: torch.Tensor
    kl: torch.Tensor
    layer_kl: dict[str, torch.Tensor] = field(default_factory=dict)
    posterior: DiagonalGaussian | None = None

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl


class VAE(nn.Module):
    """A VAE for images of ``shape`` [C, H, W] in [0, 1] with ``latent_dim`` latents.

    - ``encoder(extra_outputs, cond_dim)`` builds a net x -> [B, 2 * latent_dim + extra_outputs];
    - ``decoder(out_channels, cond_dim)`` builds a net z -> likelihood parameters [B, out_channels, H, W];
    - ``likelihood``: p(x|z) (``vaelab.likelihoods``);
    - ``posterior``: the family of q(z|x) (``vaelab.posteriors``; default: the encoder's Gaussian);
    - ``prior``: p(z) (``vaelab.priors``; default: N(0, I));
    - ``ladder``: two latent layers z2 -> z1 (``vaelab.nets.ladder``) instead of posterior and prior;
    - ``classifier``: q(y|x) of the semi-supervised M2 model (``conditional`` must then be true);
    - ``conditional``: encoder and decoder also see the one-hot label (``num_classes`` classes);
    - ``channels_last``: NHWC memory layout for convolutional nets.
    """

    def __init__(self, shape, latent_dim: int, encoder: Callable[..., nn.Module], decoder: Callable[..., nn.Module],
                 likelihood: Likelihood, posterior: nn.Module | None = None, prior: nn.Module | None = None,
                 ladder: nn.Module | None = None, classifier: nn.Module | None = None, conditional: bool = False,
                 num_classes: int = 10, channels_last: bool = False):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim = int(latent_dim)
        checked_shape(self.shape, self.latent_dim)
        self.num_classes = int(num_classes)
        self.conditional = bool(conditional)
        self.channels_last = bool(channels_last)
        cond_dim = self.num_classes if self.conditional else 0
        # (registered in this order, which fixes the parameter order that optimizer states follow)
        self.likelihood = likelihood
        self.posterior = posterior if posterior is not None else GaussianPosterior()
        self.prior = prior if prior is not None else StandardNormal(self.latent_dim)
        self.ladder = ladder
        self.classifier = classifier
        self.encoder = encoder(extra_outputs=self.posterior.context_dim, cond_dim=cond_dim)
        self.decoder = decoder(out_channels=likelihood.param_channels(self.shape[0]), cond_dim=cond_dim)
        self._check_families()
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self._forward = self._eager_forward

    def _check_families(self) -> None:
        """Refuse the latent structures that do not combine, with the way out."""
        if self.ladder is not None and not (self.posterior.closed_form and self.prior.standard_normal):
            raise ConfigError("model=hierarchical has its own prior and posterior: use posterior=gaussian prior=normal")
        if self.ladder is not None and self.ladder.latent_dim != self.latent_dim:
            raise ConfigError("model.ladder.latent_dim must equal model.latent_dim (the decoder's input)")
        if self.conditional and isinstance(self.prior, VampPrior):
            raise ConfigError("prior=vamp encodes unlabelled pseudo-inputs: use it with model.conditional=false")
        if self.classifier is not None and not self.conditional:
            raise ConfigError("a model.classifier (the M2 model) needs model.conditional=true: use experiment=mnist_m2_100")

    # --- what the model is -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def semi_supervised(self) -> bool:
        """Whether this is the M2 model (a classifier q(y|x) and a label-conditional VAE)."""
        return self.classifier is not None

    @property
    def closed_form_kl(self) -> bool:
        """Whether KL(q(z|x) || p(z)) is the sum of the closed-form per-dimension KLs of the encoder's
        Gaussian against N(0, I): Gaussian posterior, standard-normal prior, one latent layer."""
        return self.posterior.closed_form and self.prior.standard_normal and self.ladder is None

    @property
    def noise_dim(self) -> int:
        """Standard-normal noise per sample: D, or D1 + D2 for the two-layer model."""
        return self.ladder.noise_dim if self.ladder is not None else self.latent_dim

    @property
    def image_dims(self) -> int:
        return math.prod(self.shape)

    def use_compiled_step(self, mode: str | None = None) -> None:
        """Run the deterministic part of a pass (nets, latents and likelihood, given the noise) through
        ``torch.compile``; it computes the same function as the eager path."""
        self._forward = torch.compile(self._eager_forward, mode=mode)

    # --- the pieces ----------------------------------------------------------------------
    @staticmethod
    def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
        """The densities are computed in float32 (or float64) even when the nets run in bf16."""
        return t.to(torch.promote_types(t.dtype, torch.float32))

    def one_hot(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The label as the conditional nets' input [B, K] (None for unconditional models)."""
        if not self.conditional:
            return None
        if y is None:
            raise ConfigError("this is a conditional model (model.conditional=true): give the class labels")
        return F.one_hot(y.long(), self.num_classes).to(self.dtype)

    def encoder_output(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output h [B, 2D + context] in float32."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._at_least_float32(self.encoder(x, self.one_hot(y)))

    def gaussian_posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagonalGaussian:
        """The encoder's Gaussian q0(z|x) (what the VampPrior averages over its pseudo-inputs)."""
        return DiagonalGaussian.from_encoder_output(self.encoder_output(x, y)[:, : 2 * self.latent_dim])

    def latent_sample(self, h: torch.Tensor, eps: torch.Tensor) -> LatentSample:
        """Samples z and their densities from the encoder output h and noise eps [S, B, noise_dim]."""
        if self.ladder is not None:
            return self.ladder(h, eps)
        d = self.latent_dim
        base = DiagonalGaussian.from_encoder_output(h[:, : 2 * d])
        z, log_q = self.posterior(base, h[:, 2 * d :], eps)
        log_p = self.log_prior(z)
        return LatentSample(z, log_q, log_p, base, base.kl_standard_normal_per_dim() if self.closed_form_kl else None)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of latents z [..., D] under a one-layer model's prior (the two-layer model's
        marginal p(z1) has no closed form)."""
        if self.ladder is not None:
            raise ValueError("log p(z1) of model=hierarchical is an integral over z2: it has no closed form")
        return self.prior.log_prob(z, self.gaussian_posterior)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z) [n, D] (for the two-layer model z1 ~ p(z1|z2), z2 ~ N(0, I)); drawn with
        ``generator`` on the CPU, so a seed gives the same z on any device."""
        if self.ladder is not None:
            return self.ladder.sample_prior(n, generator)
        return self.prior.sample(n, self.gaussian_posterior, generator).to(self.device)

    def decoder_params(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The likelihood's parameters for latents z [B, D]."""
        return self._at_least_float32(self.decoder(z, self.one_hot(y)))

    def log_px_given(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z_s) [S, B] for latents z [S, B, D]."""
        s, b = z.shape[:2]
        x_rep = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        y_rep = None if y is None else y.repeat(s)
        return -self.likelihood.nll(self.decoder_params(z.reshape(s * b, -1), y_rep), x_rep).view(s, b)

    def _eager_forward(self, x: torch.Tensor, y: torch.Tensor | None, eps: torch.Tensor):
        """Encoder, latents and decoder for noise eps [S, B, noise_dim]: the LatentSample's tensors
        and log p(x|z_s) [S, B] (a flat tuple, which torch.compile returns as is)."""
        sample = self.latent_sample(self.encoder_output(x, y), eps)
        log_px = self.log_px_given(sample.z, x, y)
        return (sample.z, sample.log_q, sample.log_p, sample.base.mu, sample.base.logvar, sample.kl_per_dim,
                sample.layer_kl, log_px)

    def sample_terms(self, x: torch.Tensor, samples: int, y: torch.Tensor | None = None):
        """Draw ``samples`` z per image: (LatentSample, log p(x|z) [S, B])."""
        eps = torch.randn(samples, len(x), self.noise_dim, device=x.device, dtype=self.dtype)
        z, log_q, log_p, mu, logvar, kl_per_dim, layer_kl, log_px = self._forward(x, y, eps)
        return LatentSample(z, log_q, log_p, DiagonalGaussian(mu, logvar), kl_per_dim, layer_kl), log_px

    def per_class_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """recon(x, y) and KL(q(z|x, y) || p(z)) for every class y: [B, K] each (one sample)."""
        k, b = self.num_classes, len(x)
        classes = torch.arange(k, device=x.device).repeat_interleave(b)
        sample, log_px = self.sample_terms(x.repeat(k, *([1] * (x.dim() - 1))), 1, classes)
        return -log_px[0].view(k, b).T, sample.kl.view(k, b).T

    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x) of the M2 model as logits [B, K] (float32)."""
        return self.classifier(x).float()

    # --- what a user calls ---------------------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagonalGaussian:
        """The Gaussian posterior over the decoder's latents [B, D]: q0(z|x) (for a flow posterior, the
        Gaussian before the flow), or for the two-layer model q(z1|x, z2 = E[z2|x])."""
        if self.ladder is not None:
            return self.ladder.mean_posterior(self.encoder_output(x, y))
        return self.gaussian_posterior(x, y)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z] (E[x|z, y] for conditional models) as images in [0, 1]."""
        return self.likelihood.mean(self.decoder_params(z, y))

    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images E[x|z], z ~ p(z) (a conditional model also needs the n labels y)."""
        return self.decode(self.sample_prior(n, generator), y)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = E[z|x]]: each image through the posterior mean."""
        return self.decode(self.encode(x, y).mu, y)

    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 10,
                    y: torch.Tensor | None = None) -> torch.Tensor:
        """For image pairs x1, x2 [B, C, H, W]: E[x|z] along z = (1 - t) E[z|x1] + t E[z|x2], t from 0 to
        1 in ``steps`` steps: [B, steps, C, H, W] (a conditional model decodes with the labels y of x1)."""
        a, b = self.encode(x1, y).mu, self.encode(x2, y).mu
        t = torch.linspace(0, 1, steps, device=a.device, dtype=a.dtype)[None, :, None]
        z = ((1 - t) * a[:, None] + t * b[:, None]).reshape(-1, self.latent_dim)
        images = self.decode(z, None if y is None else y.repeat_interleave(steps))
        return images.view(len(x1), steps, *images.shape[1:])

    def decode_class_rows(self, z: torch.Tensor) -> torch.Tensor:
        """A conditional model's E[x|z, y] for each of the n latents z [n, D] with every class y:
        [K * n] images, one row of n per class (the same z down each column)."""
        y = torch.arange(self.num_classes, device=z.device).repeat_interleave(len(z))
        return self.decode(z.repeat(self.num_classes, 1), y)

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ELBOTerms:
        """-ELBO = recon + KL per image [B], one z sample: of log p(x|y) for a conditional model, of
        log p(x) with the label marginalized by q(y|x) for M2 (where ``y`` is not needed)."""
        if self.semi_supervised:
            recon, kl, _, _ = M2.per_image(*self.per_class_terms(x), self.classifier_logits(x),
                                           torch.full((len(x),), -1, device=x.device))
            return ELBOTerms(recon, kl)
        sample, log_px = self.sample_terms(x, 1, y)
        return ELBOTerms(-log_px[0], sample.kl, dict(sample.layer_kl), sample.base)

    @torch.no_grad()
    def iwae_log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 100,
                            y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) ~ logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] per image [B]
        (log p(x|y) for conditional models), with the k samples drawn ``chunk`` at a time and
        combined with a running logsumexp. The encoder runs once."""
        h = self.encoder_output(x, y)
        total = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float32)
        for start in range(0, k, chunk):
            s = min(chunk, k - start)
            sample = self.latent_sample(h, torch.randn(s, len(x), self.noise_dim, device=x.device, dtype=h.dtype))
            log_w = log_importance_weights(sample, self.log_px_given(sample.z, x, y))
            total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
        return total - math.log(k)

    def log_likelihood(self, x: torch.Tensor, k: int = 1000, y: torch.Tensor | None = None,
                       chunk: int = 100) -> torch.Tensor:
        """The IWAE estimate of log p(x) [B] with k samples: log p(x|y) for a conditional model, and
        for M2 log sum_y p(y) p(x|y), each class's term estimated with k samples."""
        if not self.semi_supervised:
            return self.iwae_log_likelihood(x, k, chunk, y if self.conditional else None)
        per_class = torch.stack([self.iwae_log_likelihood(x, k, chunk, torch.full((len(x),), c, device=x.device))
                                 for c in range(self.num_classes)])
        return torch.logsumexp(per_class, 0) - math.log(self.num_classes)
