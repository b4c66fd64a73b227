"""Image completion against the exact conditional of a linear-Gaussian VAE, and the likelihoods'
draws x ~ p(x|z) against their densities."""

import math

import pytest
import torch

from vaelab.completion import MASKS, complete, make_mask, missing_pixel_errors
from vaelab.errors import ConfigError
from vaelab.likelihoods import Bernoulli, DiscretizedLogistic, Gaussian
from vaelab.posteriors import DiagonalGaussian
from vaelab.priors import StandardNormal


class LinearGaussianVAE:
    """x = W z + b + sigma * noise on small images (4 x 4 by default), z ~ N(0, I_2), with an encoder
    q(z|x) = N(m(x) + shift * s, inflate * diag(S)), where m(x) = S W^T (x - b) / sigma^2 and
    S = (I + W^T W / sigma^2)^-1 are the exact posterior's mean and covariance (s: its standard
    deviations). The pixels stay well inside [0, 1] (b = 0.5, small W), where the Gaussian
    likelihood's mean needs no clamping. Only the methods a completion uses."""

    def __init__(self, shift=0.0, inflate=2.0, sigma=0.05, latent_dim=2, shape=(1, 4, 4)):
        generator = torch.Generator().manual_seed(0)
        self.shape = shape
        pixels = math.prod(shape)
        self.w = 0.1 * torch.randn(pixels, latent_dim, generator=generator, dtype=torch.double)
        self.b = torch.full((pixels,), 0.5, dtype=torch.double)
        self.sigma = sigma
        cov = torch.linalg.inv(torch.eye(latent_dim, dtype=torch.double) + self.w.T @ self.w / sigma**2)
        self.gain = cov @ self.w.T / sigma**2
        self.shift, self.logvar = shift * cov.diagonal().sqrt(), torch.log(inflate * cov.diagonal())
        self.likelihood, self.prior = Gaussian(scale=sigma), StandardNormal(latent_dim)
        self.latent_dim, self.conditional, self.device = latent_dim, False, torch.device("cpu")

    def encode(self, x, y=None):
        mu = (x.flatten(1) - self.b) @ self.gain.T + self.shift
        return DiagonalGaussian(mu, self.logvar.expand_as(mu))

    def decoder_params(self, z, y=None):
        return (z @ self.w.T + self.b).view(-1, *self.shape)

    def decode(self, z, y=None):
        return self.likelihood.mean(self.decoder_params(z, y))

    def log_prior(self, z):
        return self.prior.log_prob(z)

    def draw(self, n, generator):
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.double)
        noise = torch.randn(n, *self.shape, generator=generator, dtype=torch.double)
        return self.decoder_params(z) + self.sigma * noise

    def conditional_mean(self, x, missing):
        """E[x_miss | x_obs] = b_m + S_mo S_oo^-1 (x_obs - b_o), with S = W W^T + sigma^2 I."""
        cov = self.w @ self.w.T + self.sigma**2 * torch.eye(len(self.b), dtype=torch.double)
        m = missing.flatten()
        o = ~m
        out = x.flatten(1).clone()
        out[:, m] = self.b[m] + (out[:, o] - self.b[o]) @ torch.linalg.solve(cov[o][:, o], cov[o][:, m])
        return out.view_as(x)


def chain_estimates(model, method, mask="bottom_half", images=4, chains=100, iterations=250, burn_in=50):
    """The completions of ``images`` images, each the average of ``chains`` independent chains, and
    the exact conditional means."""
    generator = torch.Generator().manual_seed(1)
    x = model.draw(images, generator)
    missing = make_mask(mask, images, model.shape, generator=generator)
    done = complete(model, x.repeat_interleave(chains, 0), missing.repeat_interleave(chains, 0), method,
                    iterations, burn_in, init=torch.tensor(0.5), generator=generator)
    estimate = done.images.view(images, chains, *model.shape).mean(1)
    exact = model.conditional_mean(x, missing[0])
    gap = (estimate - exact)[missing.expand_as(x)].abs().max().item()
    spread = (exact - 0.5)[missing.expand_as(x)].abs().max().item()  # how far the answer is from the start
    return gap, spread, done.acceptance


@pytest.mark.parametrize("method", ["pseudo_gibbs", "mwg"])
def test_completions_match_the_exact_conditional_mean_when_q_has_the_posterior_mean(method):
    """Both samplers, with an encoder of the exact posterior mean (and twice its variance), reach
    E[x_miss | x_obs] within 0.003 (gaps of 0.0003 to 0.0007 over five seeds; the answer is ~0.14
    from the start). Catches x_miss never redrawn (the chain stays at its start), the estimate taken from
    one pass, and (MwG) a ratio without log p(z) (off by ~0.02)."""
    gap, spread, _ = chain_estimates(LinearGaussianVAE(), method)
    assert spread > 0.1
    assert gap < 0.003


def test_metropolis_within_gibbs_stays_exact_with_a_biased_encoder_where_pseudo_gibbs_does_not():
    """With q's mean off by 1.5 posterior standard deviations, MwG still targets p(z, x_miss | x_obs)
    (gaps of 0.0012 to 0.0018 over five seeds) while pseudo-Gibbs inherits q's bias (~0.07).
    Catches the acceptance ratio without the q terms (then a gap of ~0.04)."""
    biased = LinearGaussianVAE(shift=1.5)
    gap, _, acceptance = chain_estimates(biased, "mwg")
    assert 0.05 < acceptance < 0.9
    assert gap < 0.006
    pseudo_gap, _, _ = chain_estimates(biased, "pseudo_gibbs")
    assert pseudo_gap > 0.04


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("method", ["pseudo_gibbs", "mwg"])
def test_observed_pixels_are_never_changed(mask, method):
    """Bit for bit, on 3-channel images with a decoder that moves every pixel: catches the
    decoder's mean returned for the whole image, or a mask applied to one channel only."""
    model = LinearGaussianVAE(shape=(3, 4, 4))
    generator = torch.Generator().manual_seed(2)
    x = model.draw(6, generator)
    missing = make_mask(mask, 6, x.shape[1:], generator=generator)
    done = complete(model, x, missing, method, iterations=5, burn_in=2, init=torch.tensor(0.0), generator=generator)
    observed = ~missing.expand_as(x)
    assert torch.equal(done.images[observed], x[observed])
    assert (done.images[~observed] != x[~observed]).all()


def test_masks_hide_the_named_pixels():
    bottom, top, left, centre = (make_mask(name, 1, (1, 4, 6))[0, 0] for name in MASKS[:4])
    assert bottom[2:].all() and not bottom[:2].any()
    assert top[:2].all() and not top[2:].any()
    assert left[:, :3].all() and not left[:, 3:].any()
    assert centre[1:3, 1:4].all() and centre.sum() == 6
    rate = make_mask("random", 2000, (1, 8, 8), 0.3, torch.Generator().manual_seed(0)).double().mean().item()
    assert rate == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ConfigError, match="completion.mask=corner is unknown"):
        make_mask("corner", 1, (1, 4, 4))
    with pytest.raises(ConfigError, match="completion.burn_in=5 must be >= 0 and below completion.iterations=5"):
        complete(LinearGaussianVAE(), torch.zeros(1, 1, 4, 4, dtype=torch.double), bottom[None, None], "mwg",
                 5, 5, torch.tensor(0.5))


def test_missing_pixel_errors_count_only_the_missing_pixels():
    truth = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    completed = torch.tensor([[[[1.0, 0.0], [0.8, 0.4]]]])
    missing = torch.tensor([[[[False, False], [True, True]]]])
    errors = missing_pixel_errors(completed, truth, missing, bernoulli=True)
    assert errors["mse"] == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert errors["bce"] == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert "bce" not in missing_pixel_errors(completed, truth, missing, bernoulli=False)


def test_bernoulli_and_gaussian_draws_have_the_likelihoods_moments():
    """Catches a Bernoulli drawn from the logits instead of sigmoid(logits), and a Gaussian drawn
    with sigma^2 or without the decoded log sigma."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.tensor([-2.0, 0.0, 1.5]).view(1, 3, 1, 1).expand(40000, 3, 1, 1)
    draws = Bernoulli().sample(logits, generator)
    torch.testing.assert_close(draws.mean(0).flatten(), torch.sigmoid(logits[0].flatten()), atol=0.01, rtol=0)
    learned = Gaussian(learn_scale=True)
    params = torch.tensor([0.3, -0.1, 0.2, 1.0]).view(1, 4, 1, 1).expand(40000, 4, 1, 1)
    mu, log_scale = learned._split(params[:1])
    draws = learned.sample(params, generator)
    torch.testing.assert_close(draws.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(draws.std(0), log_scale[0].exp(), atol=0.02, rtol=0.01)
    fixed = Gaussian(scale=0.2).sample(torch.zeros(40000, 1, 1, 1), generator)
    assert fixed.std().item() == pytest.approx(0.2, rel=0.02)


def test_discretized_logistic_draws_follow_its_probabilities():
    """200,000 draws of one sub-pixel against exp(log_prob) over the 256 values: Pearson's
    chi-square, ~chi2(255) (mean 255, sd 23; 234 to 270 over four seeds), below 370. One component
    is half a bin wide, so that the mutants fail by far: the most likely component always taken
    (no Gumbel noise, ~190,000), floor instead of rounding (~6,500), half the logistic's scale (~88,000)."""
    likelihood = DiscretizedLogistic(components=3)
    params = torch.tensor([0.5, -1.0, 0.2, -0.6, 0.1, 0.7, -2.5, -5.5, -2.0]).view(1, 9, 1, 1)
    draws = likelihood.sample(params.expand(200000, 9, 1, 1), torch.Generator().manual_seed(0))
    values = (draws.flatten() * 255).round().long()
    torch.testing.assert_close(values / 255, draws.flatten(), atol=1e-6, rtol=0)  # on the grid v/255
    counts = torch.bincount(values, minlength=256).double()
    grid = torch.arange(256, dtype=torch.float32).view(256, 1, 1, 1) / 255
    expected = likelihood.log_prob(params.expand(256, 9, 1, 1), grid).flatten().exp().double() * len(values)
    assert ((counts - expected) ** 2 / expected).sum().item() < 370
