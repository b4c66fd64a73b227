"""Image completion: fill the missing pixels of an image from its observed ones with the trained
encoder and decoder, by Markov chains on (z, x_miss) (Rezende et al. 2014; Mattei & Frellsen 2018).

With x = (x_obs, x_miss), x_miss first filled with ``init``, each iteration t

1. draws z' ~ q(z | x_obs, x_miss) from the encoder;
   - pseudo-Gibbs (Rezende et al. 2014): z_t = z' always. Its stationary law is p(x_miss | x_obs)
     only when q is the exact posterior;
   - Metropolis-within-Gibbs (Mattei & Frellsen 2018): z' is an independence proposal for the
     target p(z | x_obs, x_miss), accepted with probability
         min(1, p(x|z') p(z') q(z_{t-1}|x) / (p(x|z_{t-1}) p(z_{t-1}) q(z'|x))),
     else z_t = z_{t-1}: an exact MCMC sampler of p(z, x_miss | x_obs) whatever q is;
2. draws x_miss ~ p(x_miss | z_t) (the decoder's pixels are independent given z).

q is the encoder's Gaussian q0(z|x) (``model.encode``), also for flow posteriors: as a proposal
of known density it keeps Metropolis-within-Gibbs exact. log p(z) is the model's prior's; the
two-layer model, whose p(z1) has no closed form, takes pseudo-Gibbs only.

The completion is the Rao-Blackwellized estimate of E[x_miss | x_obs], the mean of E[x_miss | z_t]
over the iterations after ``burn_in``; the observed pixels are returned untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from vaelab.domain_classifier import DomainClassifier
from vaelab.errors import ConfigError, check_integer
from vaelab.likelihoods import Bernoulli

log = logging.getLogger("vaelab")

MASKS = ("bottom_half", "top_half", "left_half", "center", "random")
METHODS = ("pseudo_gibbs", "mwg")


def make_mask(name: str, n: int, shape, missing_rate: float = 0.5,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Which pixels are missing (True), [n, 1, H, W] (all channels of a pixel together): the
    named half (``bottom_half``: rows H/2.., ``top_half``, ``left_half``), the ``center`` square of
    side H/2 x W/2, or each pixel independently with probability ``missing_rate`` (``random``)."""
    _, h, w = shape
    mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
    if name == "bottom_half":
        mask[..., h // 2 :, :] = True
    elif name == "top_half":
        mask[..., : h - h // 2, :] = True
    elif name == "left_half":
        mask[..., :, : w - w // 2] = True
    elif name == "center":
        mask[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = True
    elif name == "random":
        if not 0 < missing_rate < 1:
            raise ConfigError(f"completion.missing_rate={missing_rate} is invalid: it must be in (0, 1)")
        mask = torch.rand(n, 1, h, w, generator=generator) < missing_rate
    else:
        raise ConfigError(f"completion.mask={name} is unknown: choose one of {', '.join(MASKS)}")
    return mask


def prior_log_prob(model, z: torch.Tensor) -> torch.Tensor:
    """log p(z) [B] of the decoder's latents z [B, D] (for the Metropolis ratio)."""
    if getattr(model, "ladder", None) is not None:
        raise ConfigError("completion by Metropolis-within-Gibbs needs log p(z) of the decoder's latents, which "
                          "model=hierarchical does not have in closed form: use completion.methods=[pseudo_gibbs]")
    return model.log_prior(z)


@dataclass
class Completion:
    images: torch.Tensor  # [B, C, H, W]: the observed pixels, and E[x_miss | x_obs] where missing
    acceptance: float  # the fraction of accepted proposals (1 for pseudo-Gibbs)


def _draw(q, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ q = N(mu, diag(sigma^2)) [B, D]."""
    return q.mu + q.std * torch.randn(q.mu.shape, generator=generator, device=q.mu.device, dtype=q.mu.dtype)


@torch.no_grad()
def complete(model, x: torch.Tensor, missing: torch.Tensor, method: str, iterations: int, burn_in: int,
             init: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> Completion:
    """Complete images x [B, C, H, W] where ``missing`` [B, 1, H, W] is True, by ``method``
    (pseudo_gibbs or mwg; see the module's docstring), starting from x_miss = ``init`` (images or
    a broadcastable tensor). y: the labels of a conditional model."""
    if method not in METHODS:
        raise ConfigError(f"completion method {method} is unknown: choose from {', '.join(METHODS)}")
    check_integer("completion.iterations", iterations)
    if not 0 <= burn_in < iterations:
        raise ConfigError(f"completion.burn_in={burn_in} must be >= 0 and below completion.iterations={iterations}")
    likelihood, metropolis = model.likelihood, method == "mwg"
    missing = missing.expand_as(x)
    x_hat = torch.where(missing, init.to(x), x)
    z = _draw(model.encode(x_hat, y), generator)
    params = model.decoder_params(z, y)
    log_prior = prior_log_prob(model, z) if metropolis else None
    total, accepted = torch.zeros_like(x), 0.0
    for t in range(iterations):
        q = model.encode(x_hat, y)
        z_new = _draw(q, generator)
        params_new = model.decoder_params(z_new, y)
        if metropolis:
            log_prior_new = prior_log_prob(model, z_new)
            log_ratio = (-likelihood.nll(params_new, x_hat) + log_prior_new - q.log_prob(z_new)) \
                - (-likelihood.nll(params, x_hat) + log_prior - q.log_prob(z))
            u = torch.rand(log_ratio.shape, generator=generator, device=x.device, dtype=log_ratio.dtype)
            accept = torch.log(u) < log_ratio
            z = torch.where(accept[:, None], z_new, z)
            params = torch.where(accept.view(-1, *([1] * (params.dim() - 1))), params_new, params)
            log_prior = torch.where(accept, log_prior_new, log_prior)
            accepted += accept.double().mean().item()
        else:
            z, params = z_new, params_new
            accepted += 1.0
        x_hat = torch.where(missing, likelihood.sample(params, generator).to(x), x)
        if t >= burn_in:
            total += likelihood.mean(params).to(x)
    estimate = total / (iterations - burn_in)
    return Completion(torch.where(missing, estimate, x), accepted / iterations)


def missing_pixel_errors(completed: torch.Tensor, truth: torch.Tensor, missing: torch.Tensor,
                         bernoulli: bool) -> dict[str, float]:
    """The mean squared error over the missing pixels (and channels), and for a Bernoulli model the
    binary cross-entropy -[x log p + (1 - x) log(1 - p)] of the truth x under the completion p."""
    missing = missing.expand_as(truth)
    errors = {"mse": ((completed - truth)[missing] ** 2).mean().item()}
    if bernoulli:
        p = completed[missing].clamp(1e-6, 1 - 1e-6)
        errors["bce"] = F.binary_cross_entropy(p, truth[missing]).item()
    return errors


def masked_picture(x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """The input as the sampler sees it: the missing pixels grey (0.5)."""
    return torch.where(missing.expand_as(x), torch.full_like(x, 0.5), x)


@torch.no_grad()
def evaluate(model, datamodule, classifier: DomainClassifier, *, mask: str = "bottom_half",
             missing_rate: float = 0.5, methods=METHODS, num_images: int = 1000, iterations: int = 100,
             burn_in: int = 50, batch_size: int = 500, num_pictures: int = 16,
             seed: int = 0) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Complete the first ``num_images`` test images under ``mask`` with each of ``methods``, and
    score the missing pixels against two baselines: ``mean_image`` (the mean training image) and
    ``reconstruction`` (E[x|z = mu(x_0)], one pass through the model from the masked image x_0 with
    the mean training image in its holes, which is also the samplers' start).

    Metrics ``completion/<method>/mse`` (and ``/bce`` for a Bernoulli likelihood) over the missing
    pixels, ``completion/<method>/domain_acc`` (the domain classifier's accuracy on the completed
    images), ``completion/mwg/acceptance``, ``completion/truth/domain_acc`` (on the whole images).
    Picture ``completion``: rows masked input, one per method, truth (``num_pictures`` columns)."""
    check_integer("completion.num_images", num_images)
    datamodule.setup("test")
    test, train = datamodule.test_set, datamodule.train_set
    n = min(num_images, len(test))
    x_all, y_all = test.__getitems__(range(n))
    missing_all = make_mask(mask, n, x_all.shape[1:], missing_rate, torch.Generator().manual_seed(seed))
    init = (train.images.double().mean(0) / 255).float().to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    model.eval()
    results: dict[str, list[torch.Tensor]] = {name: [] for name in ("mean_image", "reconstruction", *methods)}
    accepted = 0.0  # Metropolis-within-Gibbs proposals accepted, summed over the images
    for start in range(0, n, batch_size):
        x = x_all[start : start + batch_size].to(model.device)
        missing = missing_all[start : start + batch_size].to(model.device)
        y = y_all[start : start + batch_size].to(model.device) if model.conditional else None
        x0 = torch.where(missing.expand_as(x), init.expand_as(x), x)
        results["mean_image"].append(x0.cpu())
        recon = model.decode(model.encode(x0, y).mu, y)
        results["reconstruction"].append(torch.where(missing.expand_as(x), recon, x).cpu())
        for method in methods:
            done = complete(model, x, missing, method, iterations, burn_in, init, y, generator)
            results[method].append(done.images.cpu())
            accepted += done.acceptance * len(x) if method == "mwg" else 0.0
    bernoulli = isinstance(model.likelihood, Bernoulli)
    classifier = classifier.to(model.device)
    metrics = {"completion/truth/domain_acc": classifier.accuracy(x_all, y_all)}
    completed = {name: torch.cat(parts) for name, parts in results.items()}
    for name, images in completed.items():
        for key, value in missing_pixel_errors(images, x_all, missing_all, bernoulli).items():
            metrics[f"completion/{name}/{key}"] = value
        metrics[f"completion/{name}/domain_acc"] = classifier.accuracy(images, y_all)
    if "mwg" in methods:
        metrics["completion/mwg/acceptance"] = accepted / n
    shown = slice(0, min(num_pictures, n))
    rows = [masked_picture(x_all[shown], missing_all[shown]), *(completed[m][shown] for m in methods), x_all[shown]]
    picture = make_grid(torch.cat(rows), nrow=len(x_all[shown]), pad_value=0.5)
    log.info("completed %d test images (mask %s) with %s", n, mask, ", ".join(methods))
    return metrics, {"completion": picture}
