"""Posterior flows, priors and post-training samplers against independent computations."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.autograd.functional import jacobian
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

import vaelab
from vaelab.errors import ConfigError, instantiate
from vaelab.posteriors import (
    DiagonalGaussian,
    GaussianPosterior,
    IAFPosterior,
    PlanarPosterior,
    planar_u_hat,
)
from vaelab.priors import (
    MixtureOfGaussians,
    StandardNormal,
    VampPrior,
    mixture_log_prob,
)
from vaelab.samplers import GMMSampler, PriorSampler

CONF = Path(vaelab.__file__).parent / "conf"
D = 3


def make_posterior(name: str, latent_dim: int = D, dtype=torch.float32):
    torch.manual_seed(0)
    posterior = {
        "gaussian": lambda: GaussianPosterior(),
        "iaf": lambda: IAFPosterior(latent_dim, steps=2, hidden=16, context=5),
        "planar": lambda: PlanarPosterior(latent_dim, steps=4),
    }[name]()
    posterior = posterior.to(dtype)
    if name == "iaf":  # larger weights than the default init, so that the flow is far from the identity
        with torch.no_grad():
            for p in posterior.parameters():
                p.mul_(3.0)
    return posterior


def random_base(batch: int, latent_dim: int = D, dtype=torch.float32) -> DiagonalGaussian:
    return DiagonalGaussian(torch.randn(batch, latent_dim, dtype=dtype), 0.5 * torch.randn(batch, latent_dim, dtype=dtype))


def linear_encoder(shape, latent_dim: int, dtype=torch.float64):
    """A fixed random linear Gaussian encoder: images [K, C, H, W] -> DiagonalGaussian [K, D]."""
    g = torch.Generator().manual_seed(7)
    numel = math.prod(shape)
    weight = torch.randn(numel, 2 * latent_dim, generator=g, dtype=dtype) / math.sqrt(numel)

    def encode(images):
        mu, logvar = (images.flatten(1).to(dtype) @ weight).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    return encode


# ---------------------------------------------------------------------------------------- posteriors


def test_gaussian_posterior_is_the_reparameterized_base():
    torch.manual_seed(1)
    base, eps = random_base(4), torch.randn(5, 4, D)
    posterior = GaussianPosterior()
    z, log_q = posterior(base, torch.zeros(4, 0), eps)
    assert posterior.context_dim == 0 and posterior.closed_form
    torch.testing.assert_close(z, base.mu + base.std * eps)
    torch.testing.assert_close(log_q, Normal(base.mu, base.std).log_prob(z).sum(-1))


@pytest.mark.parametrize("name", ["iaf", "planar"])
def test_flow_log_q_is_base_log_prob_minus_log_det_of_the_autograd_jacobian(name):
    posterior = make_posterior(name, dtype=torch.float64)
    assert not posterior.closed_form
    torch.manual_seed(2)
    batch = 4
    base = random_base(batch, dtype=torch.float64)
    context = 2 * torch.randn(batch, posterior.context_dim, dtype=torch.float64)
    eps = torch.randn(1, batch, D, dtype=torch.float64)
    z, log_q = posterior(base, context, eps)
    z0 = base.sample_from_noise(eps)[0]
    unit = DiagonalGaussian(torch.zeros(1, D, dtype=torch.float64), torch.zeros(1, D, dtype=torch.float64))
    distance_from_identity = 0.0
    for b in range(batch):
        # the flow alone, z0 -> z_K for image b (the unit base makes z0 = eps)
        flow = lambda x, b=b: posterior(unit, context[b : b + 1], x.view(1, 1, D))[0].view(D)
        torch.testing.assert_close(flow(z0[b]), z[0, b])
        J = jacobian(flow, z0[b])
        expected = Normal(base.mu[b], base.std[b]).log_prob(z0[b]).sum() - torch.linalg.slogdet(J).logabsdet
        torch.testing.assert_close(log_q[0, b], expected, atol=1e-6, rtol=0)
        distance_from_identity = max(distance_from_identity, (J - torch.eye(D, dtype=J.dtype)).abs().max().item())
    assert distance_from_identity > 0.3  # a test of the log-determinants, not of an identity map


def test_iaf_steps_are_autoregressive_in_alternating_orders():
    posterior = make_posterior("iaf", dtype=torch.float64)
    torch.manual_seed(3)
    h = torch.randn(1, posterior.context_dim, dtype=torch.float64)
    z = torch.randn(D, dtype=torch.float64)
    lower = torch.tril(torch.ones(D, D, dtype=torch.bool), diagonal=-1)
    for k, step in enumerate(posterior.flow):
        # the MADE outputs m_d, s_d depend only on the inputs before d in the step's order ...
        made = jacobian(lambda x, step=step: torch.cat(step.made(x.view(1, D), h)).view(2, D), z)  # [2, D, D]
        allowed = lower if k % 2 == 0 else lower.T  # step 0: order 1..D; step 1: reversed
        assert made[:, ~allowed].abs().max() == 0
        assert (made[:, allowed].abs() > 1e-6).all()  # ... and on all of them
        # every output, the first in the order included, depends on the context h
        made_h = jacobian(lambda c, step=step: torch.cat(step.made(z.view(1, D), c)).view(2, D), h)  # [2, D, 1, C]
        assert (made_h.abs().amax(dim=(-2, -1)) > 1e-6).all()
        # so the step's Jacobian is triangular with diagonal sigma = exp(log det / ...) > 0
        J = jacobian(lambda x, step=step: step(x.view(1, 1, D), h)[0].view(D), z)
        assert J[~(allowed | torch.eye(D, dtype=torch.bool))].abs().max() == 0
        _, log_det = step(z.view(1, 1, D), h)
        torch.testing.assert_close(J.diagonal().log().sum(), log_det.view(()))
        assert (J.diagonal() > 0).all() and (J.diagonal() < 1).all()
    # the two steps together depend on every input: the whole flow is not triangular
    unit = DiagonalGaussian(torch.zeros(1, D, dtype=torch.float64), torch.zeros(1, D, dtype=torch.float64))
    J = jacobian(lambda x: posterior(unit, h, x.view(1, 1, D))[0].view(D), z)
    assert (J.abs() > 1e-6).all()


def test_planar_u_hat_keeps_the_flow_invertible_even_when_u_violates_it():
    torch.manual_seed(4)
    w = torch.randn(64, D, dtype=torch.float64)
    u = -(2 + 3 * torch.rand(64, 1, dtype=torch.float64)) * w / (w * w).sum(-1, keepdim=True)  # w.u in [-5, -2]
    assert ((w * u).sum(-1) < -1).all()
    u_hat = planar_u_hat(u, w)
    wu_hat = (w * u_hat).sum(-1)
    assert (wu_hat >= -1).all()
    # w.u_hat = m(w.u) = -1 + softplus(w.u) exactly
    torch.testing.assert_close(wu_hat, -1 + torch.nn.functional.softplus((w * u).sum(-1)))
    # u_hat - u is along w only
    diff = u_hat - u
    torch.testing.assert_close(diff - (diff * w).sum(-1, keepdim=True) * w / (w * w).sum(-1, keepdim=True),
                               torch.zeros_like(diff))
    # the step's derivative along w, 1 + (1 - tanh^2) w.u_hat, stays positive for every z: f is invertible
    posterior = PlanarPosterior(D, steps=1).double()
    b = torch.randn(64, 1, dtype=torch.float64)
    context = torch.cat([u, w, b], dim=-1)
    base = random_base(64, dtype=torch.float64)
    _, log_q = posterior(base, context, torch.randn(50, 64, D, dtype=torch.float64))
    assert torch.isfinite(log_q).all()
    t = torch.linspace(-5, 5, 1001, dtype=torch.float64)[:, None]
    slope = 1 + (1 - torch.tanh(t + b.T) ** 2) * wu_hat  # [1001, 64]
    assert (slope > 0).all()
    # with the raw u instead, the same derivative would go negative somewhere
    assert ((1 + (1 - torch.tanh(t + b.T) ** 2) * (w * u).sum(-1)) < 0).any()


def test_planar_context_is_steps_times_2d_plus_1_and_a_wrong_context_is_refused():
    posterior = PlanarPosterior(5, steps=8)
    assert posterior.context_dim == 8 * 11
    with pytest.raises(ValueError, match="88 context features"):
        posterior(random_base(2, 5), torch.zeros(2, 10), torch.randn(1, 2, 5))


@pytest.mark.parametrize("name", ["gaussian", "iaf", "planar"])
def test_posteriors_take_s_samples_per_image(name):
    posterior = make_posterior(name)
    torch.manual_seed(5)
    base = random_base(4)
    context = torch.randn(4, posterior.context_dim)
    z, log_q = posterior(base, context, torch.randn(7, 4, D))
    assert z.shape == (7, 4, D) and log_q.shape == (7, 4)
    assert torch.isfinite(log_q).all()
    # each sample is the flow of its own noise: S = 1 one at a time gives the same numbers
    eps = torch.randn(3, 4, D)
    z, log_q = posterior(base, context, eps)
    for s in range(3):
        z1, log_q1 = posterior(base, context, eps[s : s + 1])
        torch.testing.assert_close(z1[0], z[s])
        torch.testing.assert_close(log_q1[0], log_q[s])


def test_bad_flow_settings_are_config_errors():
    with pytest.raises(ConfigError, match="model.posterior.steps=0"):
        IAFPosterior(4, steps=0)
    with pytest.raises(ConfigError, match="model.posterior.steps=0"):
        PlanarPosterior(4, steps=0)
    with pytest.raises(ConfigError, match="model.posterior.context=-1"):
        IAFPosterior(4, context=-1)
    assert IAFPosterior(4).context_dim == 8 and IAFPosterior(4, context=0).context_dim == 0


# ---------------------------------------------------------------------------------------------- priors


def test_mixture_of_gaussians_log_prob_matches_torch_mixture():
    torch.manual_seed(6)
    prior = MixtureOfGaussians(D, components=4).double()
    with torch.no_grad():
        prior.raw_logvar.copy_(torch.randn(4, D))
        prior.logits.copy_(torch.randn(4))
    reference = MixtureSameFamily(
        Categorical(logits=prior.logits), Independent(Normal(prior.means, torch.exp(0.5 * prior.raw_logvar)), 1)
    )
    z = 2 * torch.randn(5, 6, D, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    assert not prior.standard_normal and StandardNormal(D).standard_normal


def test_vamp_prior_log_prob_matches_a_loop_over_components():
    torch.manual_seed(7)
    shape, k = (1, 4, 4), 6
    prior = VampPrior(shape, D, components=k, init_mean=0.5, init_std=1.0).double()
    assert (prior.raw_pseudo_inputs < 0).any() and (prior.raw_pseudo_inputs > 1).any()
    u = prior.pseudo_inputs
    assert u.shape == (k, *shape) and u.min() >= 0 and u.max() <= 1
    encode = linear_encoder(shape, D)
    z = torch.randn(5, 3, D, dtype=torch.float64)
    density = torch.zeros(5, 3, dtype=torch.float64)
    for j in range(k):
        q = encode(u[j : j + 1])
        density += Normal(q.mu[0], q.std[0]).log_prob(z).sum(-1).exp() / k
    torch.testing.assert_close(prior.log_prob(z, encode), density.log())
    with pytest.raises(ValueError, match="encode="):
        prior.log_prob(z)


def test_vamp_pseudo_inputs_can_start_at_images():
    prior = VampPrior([1, 2, 2], D, components=3)
    images = torch.rand(3, 1, 2, 2)
    prior.set_pseudo_inputs(images)
    torch.testing.assert_close(prior.pseudo_inputs, images)
    with pytest.raises(ConfigError, match=r"model.prior.shape=\[1, 2\]"):
        VampPrior([1, 2], D)


def one_standard_normal_component(kind: str):
    """A prior that is N(0, I) written as a one-component MoG or VampPrior."""
    if kind == "mog":
        prior = MixtureOfGaussians(D, components=1)
        with torch.no_grad():
            prior.means.zero_()
            prior.raw_logvar.zero_()
        return prior, None
    prior = VampPrior((1, 2, 2), D, components=1)

    def encode(images):
        return DiagonalGaussian(torch.zeros(images.shape[0], D), torch.zeros(images.shape[0], D))

    return prior, encode


@pytest.mark.parametrize("kind", ["mog", "vamp"])
def test_monte_carlo_kl_matches_the_closed_form_with_one_standard_normal_component(kind):
    prior, encode = one_standard_normal_component(kind)
    torch.manual_seed(8)
    q = DiagonalGaussian(torch.randn(4, D), torch.randn(4, D))
    s = 50_000
    z = q.rsample(s)
    with torch.no_grad():
        terms = q.log_prob(z) - prior.log_prob(z, encode)  # [S, B]
    mc, stderr = terms.mean(0), terms.std(0) / math.sqrt(s)
    closed = q.kl_standard_normal()
    assert ((mc - closed).abs() < 5 * stderr + 1e-4).all(), (mc, closed, stderr)
    assert (closed > 0.5).any()  # a non-trivial KL


@pytest.mark.parametrize("kind", ["normal", "mog", "vamp"])
def test_priors_take_s_samples_per_image_and_sample_reproducibly(kind):
    torch.manual_seed(9)
    prior, encode = {
        "normal": lambda: (StandardNormal(D), None),
        "mog": lambda: (MixtureOfGaussians(D, components=5), None),
        "vamp": lambda: (VampPrior((1, 4, 4), D, components=5, init_std=0.3), linear_encoder((1, 4, 4), D, torch.float32)),
    }[kind]()
    z = torch.randn(7, 4, D)
    with torch.no_grad():
        log_p = prior.log_prob(z, encode)
        assert log_p.shape == (7, 4) and torch.isfinite(log_p).all()
        torch.testing.assert_close(prior.log_prob(z[2], encode), log_p[2])
        a = prior.sample(11, encode, generator=torch.Generator().manual_seed(3))
        b = prior.sample(11, encode, generator=torch.Generator().manual_seed(3))
        c = prior.sample(11, encode, generator=torch.Generator().manual_seed(4))
    assert a.shape == (11, D) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_mixture_samples_have_the_mixtures_mean_and_covariance():
    torch.manual_seed(10)
    prior = MixtureOfGaussians(2, components=3, init_scale=3.0)
    with torch.no_grad():
        prior.raw_logvar.copy_(0.5 * torch.randn(3, 2))
        prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
        z = prior.sample(40_000, generator=torch.Generator().manual_seed(0)).double()
        w = torch.softmax(prior.logits, -1).double()
        m, var = prior.means.double(), prior.raw_logvar.exp().double()
    mean = w @ m
    cov = (w[:, None, None] * (torch.diag_embed(var) + m[:, :, None] * m[:, None, :])).sum(0) - torch.outer(mean, mean)
    torch.testing.assert_close(z.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.1 * cov.abs().max().item(), rtol=0)


# -------------------------------------------------------------------------------------------- samplers


def three_cluster_latents(n: int = 3000) -> torch.Tensor:
    """n latents [n, 2] from a known 3-component mixture in 2-D."""
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    m = torch.tensor([[-4.0, 0.0], [3.0, 2.0], [0.0, -5.0]], dtype=torch.float64)
    cov = torch.tensor([[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[0.3, -0.1], [-0.1, 0.3]]], dtype=torch.float64)
    mixture = MixtureSameFamily(Categorical(probs=w), MultivariateNormal(m, cov))
    torch.manual_seed(11)
    return mixture.sample((n,))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_sampler_samples_have_the_fitted_mixtures_mean_and_covariance(covariance_type):
    z = three_cluster_latents()
    sampler = GMMSampler(components=3, covariance_type=covariance_type, seed=0)
    assert sampler.needs_fit
    sampler.fit(z.float())
    mean, cov = sampler.mean(), sampler.covariance()
    assert mean.shape == (2,) and cov.shape == (2, 2)
    # the fitted mixture's mean is the training latents' (an EM fixed point preserves it) and, with
    # full covariances, so is its covariance
    torch.testing.assert_close(mean, z.mean(0), atol=1e-3, rtol=0)
    if covariance_type == "full":
        torch.testing.assert_close(cov, torch.cov(z.T, correction=0), atol=0.02, rtol=0)
    samples = sampler.sample(20_000, None, seed=1)
    assert samples.shape == (20_000, 2) and samples.dtype == torch.float32
    torch.testing.assert_close(samples.double().mean(0), mean, atol=0.08, rtol=0)
    torch.testing.assert_close(torch.cov(samples.double().T), cov, atol=0.25, rtol=0)
    # samples come from all three clusters, not one after the other
    assert (samples[:100, 0] < -2).any() and (samples[:100, 0] > 1.5).any()
    torch.testing.assert_close(sampler.sample(500, None, seed=5), sampler.sample(500, None, seed=5), rtol=0, atol=0)
    assert not torch.equal(sampler.sample(500, None, seed=5), sampler.sample(500, None, seed=6))


def test_gmm_sampler_refuses_to_sample_before_fit_or_to_fit_too_few_latents():
    sampler = GMMSampler(components=10)
    with pytest.raises(ConfigError, match="not fitted"):
        sampler.sample(5, None)
    with pytest.raises(ConfigError, match="sampler.components=10 but only 4 latents"):
        sampler.fit(torch.randn(4, 2))
    with pytest.raises(ConfigError, match="sampler.covariance_type=round"):
        GMMSampler(covariance_type="round")


def test_prior_sampler_draws_the_standard_normal_reproducibly():
    sampler = PriorSampler()
    assert not sampler.needs_fit
    class Model:  # what the sampler asks of a VAE
        def sample_prior(self, n, generator):
            return StandardNormal(4).sample(n, generator=generator)

    prior = Model()
    z = sampler.sample(20_000, prior, seed=0).double()
    assert z.shape == (20_000, 4) and sampler.sample(3, prior).dtype == torch.float32
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), torch.eye(4, dtype=torch.float64), atol=0.05, rtol=0)
    torch.testing.assert_close(sampler.sample(10, prior, seed=2), sampler.sample(10, prior, seed=2), rtol=0, atol=0)
    assert not torch.equal(sampler.sample(10, prior, seed=2), sampler.sample(10, prior, seed=3))


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "group, option, cls",
    [
        ("posterior", "gaussian", GaussianPosterior),
        ("posterior", "iaf", IAFPosterior),
        ("posterior", "planar", PlanarPosterior),
        ("prior", "normal", StandardNormal),
        ("prior", "mog", MixtureOfGaussians),
        ("prior", "vamp", VampPrior),
        ("sampler", "prior", PriorSampler),
        ("sampler", "gmm", GMMSampler),
    ],
)
def test_every_config_option_instantiates_with_the_models_latent_size(group, option, cls):
    path = CONF / group / f"{option}.yaml"
    assert path.read_text().startswith("# ")
    cfg = OmegaConf.create({"model": {"latent_dim": 6}, "data": {"shape": [1, 28, 28]}, group: OmegaConf.load(path)})
    obj = instantiate(cfg[group])
    assert isinstance(obj, cls)
    if group == "posterior":
        z, log_q = obj(random_base(2, 6), torch.randn(2, obj.context_dim), torch.randn(3, 2, 6))
        assert z.shape == (3, 2, 6) and log_q.shape == (3, 2)
    if group == "prior":
        assert obj.latent_dim == 6
    if option == "vamp":
        assert obj.pseudo_inputs.shape == (500, 1, 28, 28)


def test_mixture_log_prob_in_chunks_equals_the_whole():
    """The memory bound (a few rows of [rows, K, D] at a time) changes no value."""
    torch.manual_seed(0)
    z = torch.randn(7, 13, 5, dtype=torch.float64)
    mu, logvar = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    log_weights = torch.log_softmax(torch.randn(9, dtype=torch.float64), 0)
    whole = mixture_log_prob(z, log_weights, mu, logvar)
    torch.testing.assert_close(mixture_log_prob(z, log_weights, mu, logvar, max_elements=50), whole, rtol=0, atol=0)
    reference = MixtureSameFamily(Categorical(logits=log_weights), Independent(Normal(mu, (0.5 * logvar).exp()), 1))
    torch.testing.assert_close(whole, reference.log_prob(z))
