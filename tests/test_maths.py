"""The ELBO's pieces against closed forms and independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal, kl_divergence

from vaelab.errors import ConfigError
from vaelab.latents import LatentSample
from vaelab.likelihoods import Bernoulli, Gaussian
from vaelab.module import VAEModule
from vaelab.objectives import ELBO
from vaelab.posteriors import DiagonalGaussian, bound_logvar
from vaelab.priors import standard_normal_log_prob


def tiny_config(likelihood=None, beta=1.0, shape=(1, 4, 4), latent_dim=3):
    """A run config (the layout of a resolved vaelab config) of a tiny MLP VAE."""
    net = {"_partial_": True, "shape": list(shape), "latent_dim": latent_dim, "hidden": [8]}
    return {
        "data": {"shape": list(shape)},
        "model": {
            "_target_": "vaelab.vae.VAE", "shape": list(shape), "latent_dim": latent_dim,
            "encoder": {"_target_": "vaelab.nets.mlp.MLPEncoder", **net},
            "decoder": {"_target_": "vaelab.nets.mlp.MLPDecoder", **net},
            "likelihood": likelihood or {"_target_": "vaelab.likelihoods.Bernoulli"},
        },
        "objective": {"_target_": "vaelab.objectives.ELBO", "beta": beta},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        "scheduler": None,
    }


def tiny_module(config=None, **settings) -> VAEModule:
    """The VAEModule of ``config`` (default: ``tiny_config(**settings)``)."""
    return VAEModule.from_config(config or tiny_config(**settings))


def test_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.randn(4, 5), torch.randn(4, 5))
    z = q.rsample(200_000)
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z).sum(-1)).mean(0)
    torch.testing.assert_close(q.kl_standard_normal(), mc, atol=0.03, rtol=0.01)
    reference = kl_divergence(Normal(q.mu, q.std), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(q.kl_standard_normal(), reference, atol=1e-5, rtol=1e-5)


def test_posterior_log_prob_matches_torch():
    torch.manual_seed(1)
    q = DiagonalGaussian(torch.randn(3, 6), torch.randn(3, 6))
    z = q.rsample()
    torch.testing.assert_close(q.log_prob(z), Normal(q.mu, q.std).log_prob(z).sum(-1))


def test_log_variance_is_bounded_so_extreme_encoders_stay_finite():
    q = DiagonalGaussian.from_encoder_output(torch.tensor([[0.0, 0.0, 0.0, -1e4, 0.0, 1e4]] * 2))
    assert DiagonalGaussian.LOGVAR_MIN <= q.logvar.min() and q.logvar.max() <= DiagonalGaussian.LOGVAR_MAX
    assert torch.isfinite(q.kl_standard_normal()).all()
    # near the centre of the range the bound leaves the log-variance almost unchanged
    torch.testing.assert_close(bound_logvar(torch.tensor([-2.0, -1.0])), torch.tensor([-2.0, -1.0]), atol=0.01, rtol=0)


def test_bernoulli_nll_is_binary_cross_entropy_summed_per_image():
    torch.manual_seed(2)
    logits, x = torch.randn(5, 1, 4, 4), torch.rand(5, 1, 4, 4)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(Bernoulli().nll(logits, x), expected, atol=1e-4, rtol=1e-5)
    xb = (x > 0.5).float()
    torch.testing.assert_close(Bernoulli().nll(logits, xb), -TorchBernoulli(logits=logits).log_prob(xb).sum((1, 2, 3)))


def test_gaussian_nll_fixed_and_learned_scale_match_normal_log_prob():
    torch.manual_seed(3)
    mu, x = torch.randn(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    fixed = Gaussian(scale=0.2)
    torch.testing.assert_close(fixed.nll(mu, x), -Normal(mu, 0.2).log_prob(x).sum((1, 2, 3)))

    learned = Gaussian(learn_scale=True, min_log_scale=-3.0, max_log_scale=1.0)
    assert learned.param_channels(3) == 6
    raw = torch.randn(4, 3, 2, 2)
    log_scale = -3.0 + 4.0 * torch.sigmoid(raw)
    params = torch.cat([mu, raw], dim=1)
    torch.testing.assert_close(learned.nll(params, x), -Normal(mu, log_scale.exp()).log_prob(x).sum((1, 2, 3)))
    # the bound holds for any decoder output
    extreme = torch.cat([mu, torch.full_like(raw, -1e4)], dim=1)
    expected_floor = -Normal(mu, math.exp(-3.0)).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(learned.nll(extreme, x), expected_floor)


def test_loss_at_beta_one_is_the_independently_computed_negative_elbo():
    torch.manual_seed(4)
    model = tiny_module()
    x = torch.rand(6, 1, 4, 4)
    with torch.random.fork_rng():
        torch.manual_seed(10)
        terms = model.terms(x)
    with torch.random.fork_rng():
        torch.manual_seed(10)
        h = model.vae.encoder(x)
        mu, raw = h.chunk(2, -1)  # the Gaussian posterior needs no further encoder outputs
        logvar = bound_logvar(raw)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape)
        p_x = torch.sigmoid(model.vae.decoder(z))
        log_px = (x * torch.log(p_x) + (1 - x) * torch.log1p(-p_x)).sum((1, 2, 3))
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        neg_elbo = (-log_px + kl).mean()
    torch.testing.assert_close(terms.loss, neg_elbo, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(terms.nelbo, neg_elbo, atol=1e-4, rtol=1e-5)


def test_beta_weights_only_the_kl_term_and_nelbo_ignores_beta():
    q = DiagonalGaussian(torch.tensor([[2.0], [0.0]]), torch.zeros(2, 1))  # KL per image: 2 and 0
    log_px = torch.tensor([[-100.0, -110.0]])
    z = q.mu.unsqueeze(0)
    sample = LatentSample(z, q.log_prob(z), standard_normal_log_prob(z), q, q.kl_standard_normal_per_dim())
    terms = ELBO(beta=4.0)(sample, log_px)
    assert terms.recon.item() == 105.0 and terms.kl.item() == 1.0
    assert terms.loss.item() == 105.0 + 4.0 * 1.0
    assert terms.nelbo.item() == 106.0


def test_gradients_flow_through_the_reparameterized_sample():
    torch.manual_seed(5)
    vae = tiny_module().vae
    x = torch.rand(6, 1, 4, 4)
    q = vae.encode(x)
    recon = vae.likelihood.nll(vae.decoder(q.rsample()), x).mean()
    recon.backward()  # the reconstruction term alone reaches the encoder only through z
    grad = vae.encoder.head.weight.grad
    latent = vae.latent_dim
    assert grad[:latent].abs().sum() > 0, "no gradient reached the posterior mean"
    assert grad[latent:].abs().sum() > 0, "no gradient reached the posterior log-variance"


@pytest.mark.parametrize("beta", [-1.0, -1e-6])
def test_negative_beta_is_rejected(beta):
    with pytest.raises(ConfigError, match="objective.beta must be >= 0"):
        ELBO(beta=beta)


def test_latent_dim_below_one_is_rejected():
    with pytest.raises(ConfigError, match="model.latent_dim must be >= 1"):
        tiny_module(latent_dim=0)


def test_wrong_image_shape_is_a_clear_error():
    model = tiny_module()
    with pytest.raises(ConfigError, match=r"built for images of shape \[1, 4, 4\] but got \[3, 4, 4\]"):
        model.terms(torch.rand(2, 3, 4, 4))
