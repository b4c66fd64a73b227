"""The model families beyond the vanilla VAE, inside the one VAE: flow posteriors, mixture
and VampPrior priors, the conditional VAE, semi-supervised M2 and the two-layer ladder model.

The exactness checks use a linear-Gaussian decoder, x = W z + b + sigma * noise, whose marginal
p(x) is known in closed form for a Gaussian or mixture prior: the IWAE estimate with many samples
must converge to it, which it does only if log q(z|x) (flow log-determinants included) and
log p(z) enter the importance weights correctly."""

import math

import pytest
import torch
from test_likelihood_eval import SIGMA, linear_gaussian_vae
from test_maths import tiny_config, tiny_module
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from vaelab.errors import ConfigError
from vaelab.objectives import M2
from vaelab.posteriors import DiagonalGaussian

W = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -0.7], [0.2, 0.4]], dtype=torch.double)
B = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.double)


def gaussian_mixture_marginal(weights, means, covariances) -> MixtureSameFamily:
    """p(x) for z ~ sum_k w_k N(m_k, S_k) and x = W z + b + sigma * noise."""
    eye = torch.eye(4, dtype=torch.double)
    return MixtureSameFamily(
        Categorical(probs=weights),
        MultivariateNormal(means @ W.T + B, W @ covariances @ W.T + SIGMA**2 * eye),
    )


def iwae_gap(model, exact, k=5000, n=20) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = exact.sample((n,))
    return model.iwae_log_likelihood(x.view(n, 1, 2, 2), k, chunk=5000), exact.log_prob(x)


@pytest.mark.parametrize("posterior", [
    {"_target_": "vaelab.posteriors.IAFPosterior", "latent_dim": 2, "steps": 2, "hidden": 16, "forget_bias": 2.0},
    {"_target_": "vaelab.posteriors.PlanarPosterior", "latent_dim": 2, "steps": 4},
])
def test_iwae_with_a_flow_posterior_converges_to_the_exact_log_likelihood(posterior):
    """(The untrained flows are kept near enough to the Gaussian for q to stay a good proposal.)"""
    model, exact = linear_gaussian_vae(posterior=posterior)
    if "Planar" in posterior["_target_"]:
        with torch.no_grad():  # each step's (u, w, b), the same for every image: small u, unit-size w
            model.encoder.head.weight[4:] = 0.0
            model.encoder.head.bias[4:] = torch.cat([torch.cat([0.25 * torch.randn(2), torch.randn(2), 0.1 * torch.randn(1)])
                                                     for _ in range(4)])
    iwae, log_px = iwae_gap(model, exact, k=100_000)
    torch.testing.assert_close(iwae, log_px, atol=0.05, rtol=0)
    # the flow's log-determinants are far from zero, so leaving them out would miss by far more
    x = exact.sample((50,)).view(50, 1, 2, 2)
    h = model.encoder_output(x)
    base = DiagonalGaussian.from_encoder_output(h[:, :4])
    eps = torch.randn(100, 50, 2, dtype=torch.double)
    _, log_q = model.posterior(base, h[:, 4:], eps)
    assert (base.log_prob(base.sample_from_noise(eps)) - log_q).abs().mean() > 0.1


def test_iwae_with_a_mixture_prior_converges_to_the_mixture_marginal():
    prior = {"_target_": "vaelab.priors.MixtureOfGaussians", "latent_dim": 2, "components": 3}
    model, _ = linear_gaussian_vae(prior=prior)
    with torch.no_grad():
        model.prior.means.copy_(torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.0]]))
        model.prior.raw_logvar.copy_(torch.tensor([[-1.0, 0.0], [0.0, -0.5], [-0.5, -0.5]]))
        model.prior.logits.copy_(torch.tensor([0.0, 0.5, -0.5]))
    p = model.prior
    exact = gaussian_mixture_marginal(torch.softmax(p.logits, 0), p.means, torch.diag_embed(p.logvar.exp()))
    iwae, log_px = iwae_gap(model, exact)
    torch.testing.assert_close(iwae, log_px.detach(), atol=0.05, rtol=0)


def test_iwae_with_a_vampprior_converges_to_its_marginal():
    prior = {"_target_": "vaelab.priors.VampPrior", "shape": [1, 2, 2], "latent_dim": 2, "components": 3}
    model, _ = linear_gaussian_vae(prior=prior)
    with torch.no_grad():
        model.prior.raw_pseudo_inputs.copy_(torch.rand(3, 1, 2, 2, dtype=torch.double))
        components = model.gaussian_posterior(model.prior.pseudo_inputs)  # p(z) = mean_k q(z | u_k)
    exact = gaussian_mixture_marginal(torch.full((3,), 1 / 3, dtype=torch.double), components.mu,
                                      torch.diag_embed(components.logvar.exp()))
    iwae, log_px = iwae_gap(model, exact)
    torch.testing.assert_close(iwae, log_px, atol=0.05, rtol=0)


def test_a_richer_prior_or_posterior_uses_the_monte_carlo_kl():
    torch.manual_seed(0)
    config = tiny_config()
    config["model"]["prior"] = {"_target_": "vaelab.priors.MixtureOfGaussians", "latent_dim": 3, "components": 4}
    model = tiny_module(config).vae
    sample, _ = model.sample_terms(torch.rand(5, 1, 4, 4), 7)
    assert sample.kl_per_dim is None
    torch.testing.assert_close(sample.kl, (sample.log_q - sample.log_p).mean(0))
    plain, _ = tiny_module().vae.sample_terms(torch.rand(5, 1, 4, 4), 7)
    torch.testing.assert_close(plain.kl, plain.base.kl_standard_normal())  # closed form where it exists


def test_m2_terms_match_a_hand_computation():
    """Catches: the classifier term weighted by alpha alone (not alpha N / N_l per labelled image),
    a dropped entropy term in U(x), or -log p(y) left out of L(x, y)."""
    torch.manual_seed(0)
    recon, kl, logits = torch.rand(3, 4) * 100, torch.rand(3, 4) * 10, torch.randn(3, 4)
    labels = torch.tensor([2, -1, -1])
    terms = M2(alpha=7.0, dataset_size=600, num_labelled=20)(recon, kl, logits, labels)
    q = torch.softmax(logits, -1)
    labelled = recon[0, 2] + kl[0, 2] + math.log(4)  # L(x, y) = -log p(x|y,z) + KL - log p(y)
    unlabelled = [(q[i] * (recon[i] + kl[i] + math.log(4))).sum() + (q[i] * q[i].log()).sum() for i in (1, 2)]
    ce = -math.log(q[0, 2])
    expected = (labelled + 7.0 * 600 / 20 * ce + sum(unlabelled)) / 3
    torch.testing.assert_close(terms.loss, expected)
    torch.testing.assert_close(terms.nelbo, (labelled + sum(unlabelled)) / 3)
    torch.testing.assert_close(terms.extra["classifier_ce"], torch.tensor(ce, dtype=torch.float32))
    # the unlabelled bound U(x) is the label-marginal: it lies above min_y L(x, y) - log K ... and
    # equals L(x, y) when q(y|x) puts all mass on y
    certain = torch.full((1, 4), -1e4)
    certain[0, 1] = 1e4
    one = M2(dataset_size=600, num_labelled=20)(recon[:1], kl[:1], certain, torch.tensor([-1]))
    torch.testing.assert_close(one.nelbo, recon[0, 1] + kl[0, 1] + math.log(4))


def test_m2_default_alpha_is_the_papers_weight_per_image(tmp_path):
    """Kingma et al. (2014) minimize J^a = sum_i j_i over N training images, N_l of them labelled,
    with j_i = L(x_i, y_i) + (a / N_l) (-log q(y_i|x_i)) for a labelled image, U(x_i) for an
    unlabelled one, and a = 0.1 N. Per image (J^a / N = the mean of j_i), a batch's loss with the
    configured default must be the mean of j_i over its images.
    Catches: a default in another convention (50, or 0.1 weighting the batch's mean cross-entropy,
    which differs when the batch's labelled share, here 3 of 5, is not the data set's, 20 of 600)."""
    from conftest import compose_config

    alpha = compose_config(tmp_path, ["objective=m2"]).objective.alpha
    torch.manual_seed(1)
    n, n_labelled, k = 600, 20, 5
    recon, kl, logits = torch.rand(5, k) * 50, torch.rand(5, k) * 5, torch.randn(5, k)
    labels = torch.tensor([1, 4, 0, -1, -1])
    q = torch.softmax(logits, -1)
    rows = torch.arange(3)
    a = 0.1 * n
    j_labelled = recon[rows, labels[:3]] + kl[rows, labels[:3]] + math.log(k) - a / n_labelled * q[rows, labels[:3]].log()
    j_unlabelled = ((q * (recon + kl + math.log(k))).sum(-1) + (q * q.log()).sum(-1))[3:]
    objective = M2(alpha=alpha, dataset_size=n, num_labelled=n_labelled)
    torch.testing.assert_close(objective(recon, kl, logits, labels).loss, torch.cat([j_labelled, j_unlabelled]).mean())


def m2_config():
    config = tiny_config()
    config["model"]["conditional"] = True
    config["model"]["classifier"] = {"_target_": "vaelab.nets.mlp.MLPClassifier", "shape": [1, 4, 4],
                                     "num_classes": 10, "hidden": [8]}
    config["objective"] = {"_target_": "vaelab.objectives.M2", "alpha": 5.0, "dataset_size": 100, "num_labelled": 10}
    return config


def test_m2_runs_the_conditional_model_once_per_class():
    torch.manual_seed(0)
    model = tiny_module(m2_config())
    vae = model.vae
    x = torch.rand(4, 1, 4, 4)
    with torch.random.fork_rng():
        recon, kl = vae.per_class_terms(x)
    eps = torch.randn(1, 40, 3)  # the noise per_class_terms drew, class by class
    for c in (0, 3, 9):
        y = torch.full((4,), c)
        q = vae.gaussian_posterior(x, y)
        torch.testing.assert_close(kl[:, c], q.kl_standard_normal())
        z = q.sample_from_noise(eps[:, 4 * c : 4 * (c + 1)])
        torch.testing.assert_close(recon[:, c], -vae.log_px_given(z, x, y)[0])
    loss = model.terms(x, torch.tensor([3, -1, -1, 5])).loss
    loss.backward()
    assert vae.classifier.net[-1].weight.grad.abs().sum() > 0  # the classifier learns from the loss


def test_conditional_decoder_output_changes_with_the_label_and_nothing_else():
    torch.manual_seed(0)
    config = tiny_config()
    config["model"]["conditional"] = True
    model = tiny_module(config).vae
    z = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3, 4])
    torch.testing.assert_close(model.decode(z, y), model.decode(z, y))
    other = model.decode(z, (y + 1) % 10)
    assert ((model.decode(z, y) - other).abs().amax((1, 2, 3)) > 1e-4).all()
    with pytest.raises(ConfigError, match="conditional model"):
        model.decode(z)
    rows = model.decode_class_rows(z).view(10, 5, 1, 4, 4)  # one row per class, the same z down each column
    torch.testing.assert_close(rows[7], model.decode(z, torch.full((5,), 7)))


def test_incompatible_families_are_refused_clearly():
    config = tiny_config()
    config["objective"] = {"_target_": "vaelab.objectives.BetaTC"}
    config["model"]["posterior"] = {"_target_": "vaelab.posteriors.PlanarPosterior", "latent_dim": 3}
    with pytest.raises(ConfigError, match="objective=beta_tc needs posterior=gaussian"):
        tiny_module(config)
    config = m2_config()
    config["model"]["conditional"] = False
    with pytest.raises(ConfigError, match="needs model.conditional=true"):
        tiny_module(config)
    config = m2_config()
    config["objective"] = {"_target_": "vaelab.objectives.ELBO"}
    with pytest.raises(ConfigError, match="a model.classifier needs objective=m2"):
        tiny_module(config)
    config = tiny_config()
    config["data"]["labels_per_class"] = 10
    with pytest.raises(ConfigError, match="only objective=m2"):
        tiny_module(config)


def test_the_ladder_model_reports_both_layer_kls_and_bounds_log_px():
    torch.manual_seed(0)
    config = tiny_config()
    config["model"]["ladder"] = {"_target_": "vaelab.nets.ladder.LadderLatents", "latent_dim": 3, "top_dim": 2,
                                 "hidden": 8}
    model = tiny_module(config)
    vae = model.vae
    x = torch.bernoulli(torch.rand(6, 1, 4, 4))
    terms = model.terms(x)
    assert set(terms.extra) == {"kl_z1", "kl_z2"}
    assert all(torch.isfinite(v) and v >= 0 for v in terms.extra.values())
    torch.testing.assert_close(terms.kl, terms.extra["kl_z1"] + terms.extra["kl_z2"])
    with torch.no_grad():
        nelbo = torch.stack([vae.elbo_terms(x).nelbo for _ in range(200)]).mean(0)
        bounds = [-vae.iwae_log_likelihood(x, k, chunk=500) for k in (1, 50, 2000)]
    assert (bounds[2] < nelbo).all() and bounds[2].mean() < bounds[1].mean()


def _raw_logvar(logvar: torch.Tensor) -> torch.Tensor:
    """The raw encoder output that ``bound_logvar`` maps to ``logvar``."""
    half = (DiagonalGaussian.LOGVAR_MAX - DiagonalGaussian.LOGVAR_MIN) / 2
    centre = (DiagonalGaussian.LOGVAR_MAX + DiagonalGaussian.LOGVAR_MIN) / 2
    return centre + half * torch.atanh((logvar - centre) / half)


def test_iwae_of_a_linear_ladder_converges_to_its_exact_log_likelihood():
    """A ladder whose top-down net is linear where it is used (its hidden units sit far on the
    identity side of the LeakyReLU), p(z1|z2) = N(A z2 + c, diag v), and a linear-Gaussian decoder:
    then x ~ N(W c + b, W (A A^T + diag v) W^T + sigma^2 I) exactly, and IWAE-5000 must reach it
    (within 0.02 nats on average; the ELBO is 7 nats below).
    Catches: importance weights without log p(z1, z2) - log q(z1, z2|x), or with only one layer's terms."""
    torch.manual_seed(0)
    config = tiny_config(likelihood={"_target_": "vaelab.likelihoods.Gaussian", "scale": SIGMA}, shape=(1, 2, 2),
                         latent_dim=2)
    config["model"]["encoder"]["hidden"] = []
    config["model"]["decoder"]["hidden"] = []
    config["model"]["ladder"] = {"_target_": "vaelab.nets.ladder.LadderLatents", "latent_dim": 2, "top_dim": 2,
                                 "hidden": 4}
    model = tiny_module(config).vae.double()
    a = torch.tensor([[0.9, -0.4], [0.3, 0.7]], dtype=torch.double)
    c = torch.tensor([0.2, -0.1], dtype=torch.double)
    v = torch.tensor([0.3, 0.5], dtype=torch.double)
    first, last = model.ladder.top_down_net[0], model.ladder.top_down_net[2]
    with torch.no_grad():
        model.decoder.net[0].weight.copy_(W)
        model.decoder.net[0].bias.copy_(B)
        first.weight.copy_(0.1 * torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0]]))
        first.bias.fill_(50.0)  # hidden = 0.1 z2 + 50 > 0 for any z2 the model meets
        last.weight.zero_()
        last.weight[:2, :2] = a / 0.1
        last.bias.copy_(torch.cat([c - last.weight[:2] @ first.bias, _raw_logvar(v.log())]))
    exact = MultivariateNormal(W @ c + B, W @ (a @ a.T + torch.diag(v)) @ W.T + SIGMA**2 * torch.eye(4, dtype=torch.double))
    torch.manual_seed(3)
    x = exact.sample((20,))
    gap = model.iwae_log_likelihood(x.view(20, 1, 2, 2), 5000, chunk=1000) - exact.log_prob(x)
    assert abs(gap.mean().item()) < 0.02 and gap.abs().max().item() < 0.25
    elbo_gap = model.iwae_log_likelihood(x.view(20, 1, 2, 2), 1, chunk=1) - exact.log_prob(x)
    assert elbo_gap.mean().item() < -3.0  # (the test would not see the weights if q were the posterior)


def test_eval_refuses_a_sample_class_the_model_cannot_generate():
    from vaelab.eval import check_sample_class

    with pytest.raises(ConfigError, match="sample_class=3 needs a conditional model"):
        check_sample_class(tiny_module().vae, 3)
    config = tiny_config()
    config["model"]["conditional"] = True
    conditional = tiny_module(config).vae
    with pytest.raises(ConfigError, match=r"sample_class=10 is not a class: choose 0..9"):
        check_sample_class(conditional, 10)
    check_sample_class(conditional, 9)
    check_sample_class(tiny_module().vae, None)
