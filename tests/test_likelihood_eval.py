"""Likelihood evaluation, diagnostics, objectives and schedules against closed forms."""

import math

import pytest
import torch
from test_maths import tiny_config, tiny_module
from torch.distributions import MultivariateNormal

from vaelab.anomaly import auroc
from vaelab.errors import ConfigError
from vaelab.latents import LatentSample
from vaelab.likelihoods import DiscretizedLogistic
from vaelab.metrics import (
    active_units,
    bits_per_dim,
    kl_per_dimension,
    mutual_information,
)
from vaelab.objectives import IWAE, BetaTC, log_importance_weights
from vaelab.posteriors import DiagonalGaussian
from vaelab.priors import standard_normal_log_prob
from vaelab.schedules import Capacity, Cyclical, FreeBits, LinearWarmup

SIGMA = 0.5


def linear_gaussian_vae(posterior=None, prior=None, variance_factor=2.0):
    """x = W z + b + sigma * noise, z ~ N(0, I): a VAE with a linear decoder and an encoder giving the
    exact posterior mean and ``variance_factor`` times the diagonal of the exact posterior
    covariance (so q is close to, but not, the posterior). ``posterior``/``prior``: other
    families' configs (then the exact marginal is the caller's to compute)."""
    torch.manual_seed(0)
    config = tiny_config(likelihood={"_target_": "vaelab.likelihoods.Gaussian", "scale": SIGMA},
                         shape=(1, 2, 2), latent_dim=2)
    config["model"]["encoder"]["hidden"] = []
    config["model"]["decoder"]["hidden"] = []
    config["model"]["posterior"], config["model"]["prior"] = posterior, prior
    model = tiny_module(config).vae.double()
    w, b = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.6, -0.7], [0.2, 0.4]], dtype=torch.double), \
        torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.double)
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.double) + w.T @ w / SIGMA**2)
    gain = cov @ w.T / SIGMA**2
    logvar = (variance_factor * cov.diagonal()).log()
    half, centre = (DiagonalGaussian.LOGVAR_MAX - DiagonalGaussian.LOGVAR_MIN) / 2, \
        (DiagonalGaussian.LOGVAR_MAX + DiagonalGaussian.LOGVAR_MIN) / 2
    raw = centre + half * torch.atanh((logvar - centre) / half)
    with torch.no_grad():
        enc, dec = model.encoder.head, model.decoder.net[0]
        enc.weight[:4].copy_(torch.cat([gain, torch.zeros(2, 4, dtype=torch.double)]))
        enc.bias[:4].copy_(torch.cat([-gain @ b, raw]))
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    exact = MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(4, dtype=torch.double))
    return model, exact


def test_iwae_converges_to_the_exact_log_likelihood_of_a_linear_gaussian_vae():
    model, exact = linear_gaussian_vae()
    x = exact.sample((20,))
    log_px = exact.log_prob(x)
    images = x.view(20, 1, 2, 2)
    torch.manual_seed(1)
    iwae = model.iwae_log_likelihood(images, 5000, chunk=1000)
    torch.testing.assert_close(iwae, log_px, atol=0.02, rtol=0)
    assert abs((iwae - log_px).mean().item()) < 0.005
    elbo = model.iwae_log_likelihood(images, 1, chunk=1)
    with torch.no_grad():
        sample, lp = model.sample_terms(images, 20000)
        elbo = log_importance_weights(sample, lp).mean(0)
    assert (elbo < log_px - 0.01).all(), "the ELBO must lie below log p(x) (q is diagonal, the posterior is not)"


def test_iwae_draws_fresh_noise_in_every_chunk():
    """With a posterior ten times too wide (the ELBO about 6.7 nats below log p(x)), k = 500 samples
    drawn one per chunk close the gap as well as 500 drawn at once.
    Catches: the same noise reused in every chunk (the estimate would stay at a single sample's log
    weight, the ELBO)."""
    model, exact = linear_gaussian_vae(variance_factor=10.0)
    x = exact.sample((50,))
    log_px, images = exact.log_prob(x), x.view(50, 1, 2, 2)
    torch.manual_seed(1)
    one_at_a_time = model.iwae_log_likelihood(images, 500, chunk=1)
    at_once = model.iwae_log_likelihood(images, 500, chunk=500)
    with torch.no_grad():
        elbo = log_importance_weights(*model.sample_terms(images, 2000)).mean(0)
    assert (log_px - elbo).mean().item() > 5.0
    for estimate in (one_at_a_time, at_once):
        assert abs((estimate - log_px).mean().item()) < 0.1
        assert (estimate - log_px).abs().max().item() < 0.6


def test_iwae_bound_grows_with_k_and_equals_the_elbo_at_k_one():
    model, exact = linear_gaussian_vae()
    torch.manual_seed(2)
    images = exact.sample((200,)).view(200, 1, 2, 2)
    with torch.no_grad():
        sample, lp = model.sample_terms(images, 4000)
        log_w = log_importance_weights(sample, lp)  # [4000, 200]
    q = sample.base
    bounds = []
    for k in (1, 2, 5, 20, 100):
        groups = log_w[: (4000 // k) * k].view(-1, k, 200)
        bounds.append((torch.logsumexp(groups, 1) - math.log(k)).mean().item())
    assert all(b2 >= b1 - 1e-3 for b1, b2 in zip(bounds, bounds[1:], strict=False)), bounds
    # the k=1 bound is the ELBO: E_q log p(x|z) - KL in closed form for a linear Gaussian decoder
    w, b = model.decoder.net[0].weight, model.decoder.net[0].bias
    x = images.view(200, 4)
    mean_residual = ((x - b - q.mu @ w.T) ** 2).sum(1)
    trace = (w**2 @ q.logvar.exp().T).sum(0)
    expected_log_px = -0.5 * 4 * math.log(2 * math.pi * SIGMA**2) - 0.5 * (mean_residual + trace) / SIGMA**2
    elbo = (expected_log_px - q.kl_standard_normal()).mean().item()
    assert bounds[0] == pytest.approx(elbo, abs=0.02)


def test_iwae_gradient_uses_detached_normalized_weights():
    torch.manual_seed(3)
    model = tiny_module(latent_dim=2).vae.double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.double)
    eps = torch.randn(6, 4, 2, dtype=torch.double)
    objective = IWAE(k=6)

    def bound():
        sample = model.latent_sample(model.encoder_output(x), eps)
        return sample, model.log_px_given(sample.z, x)

    loss = objective(*bound()).loss
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    sample, log_px = bound()
    q, z = sample.base, sample.z
    direct = -(torch.logsumexp(log_px + standard_normal_log_prob(z) - q.log_prob(z), 0) - math.log(6)).mean()
    torch.testing.assert_close(loss, direct)  # the logged loss is the bound itself
    for g, d in zip(grads, torch.autograd.grad(direct, params), strict=True):
        torch.testing.assert_close(g, d)
    # and a finite difference on one weight
    weight = model.decoder.net[0].weight
    with torch.no_grad():
        weight[0, 0] += 1e-6
        up = objective(*bound()).loss
        weight[0, 0] -= 2e-6
        down = objective(*bound()).loss
        weight[0, 0] += 1e-6
    analytic = next(g for g, p in zip(grads, params, strict=True) if p is weight)[0, 0].item()
    assert ((up - down) / 2e-6).item() == pytest.approx(analytic, rel=1e-4)


def _discretized_logistic_reference(logits, means, log_scales, min_log_scale=-7.0) -> list[float]:
    """log P(v) for v = 0..255 of a mixture of discretized logistics, from the definition
    (differences of logistic CDFs, the edge bins open-ended) in 60-digit arithmetic."""
    import mpmath

    mpmath.mp.dps = 60
    weights = [mpmath.e ** mpmath.mpf(w) for w in logits]
    weights = [w / sum(weights) for w in weights]
    out = []
    for v in range(256):
        y = mpmath.mpf(2 * v) / 255 - 1
        p = 0
        for w, mu, log_s in zip(weights, means, log_scales, strict=True):
            s = mpmath.e ** mpmath.mpf(max(log_s, min_log_scale))
            # mass below t (left of the mean) or above t (right of it), so that no difference of
            # two numbers near 1 loses the digits of a tiny bin
            below = lambda t, mu=mu, s=s: 1 / (1 + mpmath.e ** (-(t - mpmath.mpf(mu)) / s))
            above = lambda t, mu=mu, s=s: 1 / (1 + mpmath.e ** ((t - mpmath.mpf(mu)) / s))
            upper, lower = y + mpmath.mpf(1) / 255, y - mpmath.mpf(1) / 255
            if y <= mu:
                p += w * ((1 if v == 255 else below(upper)) - (0 if v == 0 else below(lower)))
            else:
                p += w * ((1 if v == 0 else above(lower)) - (0 if v == 255 else above(upper)))
        out.append(float(mpmath.log(p)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("means", "log_scales"), [
    ([0.0, 0.5, -0.4], [-2.0, -3.0, -1.0]),  # ordinary
    ([-3.0, 3.0, 0.2], [-1.0, 0.5, -4.5]),  # means far outside [-1, 1]: the edge bins hold the mass
    ([0.3, -0.99, 1.0], [-7.0, -5.0, -20.0]),  # tiny scales, one below the clamp at -7
    ([1.5, 0.0, -2.0], [5.0, 3.0, 8.0]),  # huge scales: almost uniform over the bins
])
def test_discretized_logistic_matches_its_definition_at_the_edges(dtype, means, log_scales):
    """Every one of the 256 log-probabilities (0 and 255 included) against the definition in
    60-digit arithmetic, and their sum against 1, in float32 and float64.
    Catches: the PixelCNN++ midpoint-density stand-in for tiny bins (2 nats off at log s = -7), an
    edge bin that does not take all the mass beyond it (the sum falls below 1 for means outside
    [-1, 1]), a missing log-scale clamp, a wrong bin width."""
    logits = [0.3, -1.0, 0.5]
    lik = DiscretizedLogistic(components=3)
    params = torch.tensor([*logits, *means, *log_scales], dtype=dtype).view(1, 9, 1, 1).expand(256, 9, 1, 1)
    values = torch.arange(256, dtype=dtype).view(256, 1, 1, 1) / 255
    log_p = lik.log_prob(params, values).flatten().double()
    expected = torch.tensor(_discretized_logistic_reference(logits, means, log_scales), dtype=torch.float64)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p, expected, rtol=tolerance, atol=tolerance)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=10 * tolerance)
    assert lik.nll(params[:1], values[:1]).item() == pytest.approx(-log_p[0].item(), rel=1e-6)


def test_bits_per_dim_of_a_uniform_model_is_eight():
    dims = 3 * 32 * 32
    nll = -torch.distributions.Categorical(logits=torch.zeros(256)).log_prob(torch.tensor(17)) * dims
    assert bits_per_dim(nll, dims).item() == pytest.approx(8.0)


def test_active_units_kl_and_mutual_information_find_the_collapsed_dimensions():
    torch.manual_seed(5)
    n = 2000
    informative = torch.randn(n, 3) * 2.0
    mu = torch.cat([informative, torch.zeros(n, 3)], 1)
    logvar = torch.cat([torch.full((n, 3), -4.0), torch.zeros(n, 3)], 1)
    assert active_units(mu) == 3
    kl = kl_per_dimension(mu, logvar)
    assert (kl[3:] == 0).all() and (kl[:3] > 1).all()
    generator = torch.Generator().manual_seed(0)
    assert mutual_information(mu[:, 3:], logvar[:, 3:], generator) == pytest.approx(0.0, abs=0.02)
    mi = mutual_information(mu, logvar, generator)
    assert 0 < mi <= math.log(n)


def test_mutual_information_matches_numerical_integration():
    """Two kinds of images, q(z|x) = N(+-1, 0.5^2): I(x; z) = H(z) - H(z|x), integrated on a grid."""
    mu = torch.tensor([[1.0], [-1.0]]).repeat(1000, 1)
    logvar = torch.full_like(mu, 2 * math.log(0.5))
    grid = torch.linspace(-6, 6, 20001, dtype=torch.double)
    normal = torch.distributions.Normal(torch.tensor([[1.0], [-1.0]], dtype=torch.double), 0.5)
    mixture = normal.log_prob(grid).exp().mean(0)
    h_z = -(mixture * mixture.clamp(min=1e-300).log()).sum() * (grid[1] - grid[0])
    h_z_given_x = 0.5 * math.log(2 * math.pi * math.e * 0.25)
    exact = (h_z - h_z_given_x).item()
    estimate = mutual_information(mu, logvar, torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, abs=0.02)


def test_mutual_information_matrix_form_equals_the_direct_sum_over_pairs():
    """The one-matmul form [z^2, z, 1] . [1/s^2, -2 m/s^2, c] against log N(z_i; m_n, s_n^2) summed
    over dimensions pair by pair ([N, N, D], float64), on posteriors of different means and
    variances in 5 dimensions, chunked unevenly. Fails if a term of the expansion is dropped (e.g.
    the log-variance in c: 2.3 nats off) or a chunk's rows are misaligned with its z."""
    torch.manual_seed(11)
    n, d = 300, 5
    mu, logvar = torch.randn(n, d) * 2, torch.randn(n, d) - 1
    z = mu.double() + (0.5 * logvar.double()).exp() * torch.randn((n, d), generator=torch.Generator().manual_seed(3),
                                                                   dtype=torch.float32).double()
    pairs = torch.distributions.Normal(mu.double()[None], (0.5 * logvar.double()).exp()[None]).log_prob(z[:, None])
    log_qz = torch.logsumexp(pairs.sum(-1), dim=1) - math.log(n)
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar.double()).sum(1)).mean()
    direct = float(neg_entropy - log_qz.mean())
    assert mutual_information(mu, logvar, torch.Generator().manual_seed(3), chunk=77) == pytest.approx(direct, abs=1e-9)


def test_beta_tc_terms_add_up_to_the_kl_estimate():
    """MI + TC + dimension-wise KL = E[log q(z|x) - log p(z)] exactly (the decomposition telescopes;
    it does for any weights, so the two tests below check the weights themselves)."""
    torch.manual_seed(6)
    q = DiagonalGaussian(torch.randn(32, 4), torch.randn(32, 4) * 0.3)
    z = q.rsample(1)
    log_px = torch.zeros(1, 32)
    sample = LatentSample(z, q.log_prob(z), standard_normal_log_prob(z), q, q.kl_standard_normal_per_dim())
    one = BetaTC(beta=1.0, dataset_size=1000)(sample, log_px)
    six = BetaTC(beta=6.0, dataset_size=1000)(sample, log_px)
    kl_estimate = (q.log_prob(z[0]) - standard_normal_log_prob(z[0])).mean()
    torch.testing.assert_close(one.loss, kl_estimate)
    torch.testing.assert_close(one.extra["mi"] + one.extra["tc"] + one.extra["dwkl"], kl_estimate)
    torch.testing.assert_close(six.loss - one.loss, 5.0 * one.extra["tc"])  # beta weights the TC alone
    weights = BetaTC(dataset_size=1000).log_stratified_weights(32, "cpu").exp()
    torch.testing.assert_close(weights.sum(1), torch.ones(32))  # importance weights averaging over the data set


def _synthetic_posteriors(n: int, d: int, variance: float, seed: int) -> DiagonalGaussian:
    """n well-separated Gaussian posteriors in d dimensions, the first two dimensions correlated."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=torch.float64)
    mu[:, 1] = 0.9 * mu[:, 0] + 0.3 * mu[:, 1]
    return DiagonalGaussian(mu, torch.full((n, d), math.log(variance), dtype=torch.float64))


def _log_q_dims(q: DiagonalGaussian, z: torch.Tensor) -> torch.Tensor:
    """log q(z_i,d | x_n,d) [B, N, D]."""
    return -0.5 * ((z[:, None] - q.mu[None]) ** 2 / q.logvar.exp()[None] + q.logvar[None] + math.log(2 * math.pi))


def test_beta_tc_stratified_estimate_of_q_z_is_unbiased():
    """Over random batches containing x_0, the minibatch-stratified estimate of q(z_0) and of each
    q(z_0,d) averages to the exact (1/N) sum_n q(z_0|x_n) of the whole data set (Chen et al. 2018,
    appendix C.2: the estimator is unbiased).
    Catches: the original code's weights (1/N down column 0 instead of the diagonal), which give
    z_0's own image weight 1/M wherever it sits in the batch."""
    n, b, draws = 12, 4, 40000
    q = _synthetic_posteriors(n, 2, 0.3, seed=0)
    z0 = q.mu[0] + q.std[0] * torch.randn(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = _log_q_dims(q, z0[None])[0]  # [N, D]
    exact_joint = (torch.logsumexp(exact.sum(1), 0) - math.log(n)).exp()
    exact_dims = (torch.logsumexp(exact, 0) - math.log(n)).exp()
    objective = BetaTC(dataset_size=n)
    log_w = objective.log_stratified_weights(b, "cpu").double()
    g = torch.Generator().manual_seed(2)
    joint, dims = torch.zeros(()), torch.zeros(2, dtype=torch.float64)
    for _ in range(draws // 100):
        # 100 batches at once: x_0 at a random position among b - 1 other images drawn without replacement
        others = torch.argsort(torch.rand(100, n - 1, generator=g), 1)[:, : b - 1] + 1
        position = torch.randint(b, (100,), generator=g)
        batch = torch.cat([others, torch.zeros(100, 1, dtype=torch.long)], 1)
        batch[torch.arange(100), position], batch[:, -1] = 0, batch[torch.arange(100), position]
        terms = exact[batch]  # log q(z_0 | x_j) per dimension for the batch's images: [100, B, D]
        row = log_w[position]  # z_0's row of weights: [100, B]
        joint = joint + torch.logsumexp(row + terms.sum(-1), 1).exp().sum()
        dims = dims + torch.logsumexp(row[..., None] + terms, 1).exp().sum(0)
    torch.testing.assert_close(joint / draws, exact_joint, rtol=0.02, atol=0)
    torch.testing.assert_close(dims / draws, exact_dims, rtol=0.02, atol=0)


def test_beta_tc_estimates_the_exact_mi_and_total_correlation_of_a_data_set():
    """For 1,000 synthetic posteriors, 200 batches of 64: the batch estimates of MI = E[log q(z|x) -
    log q(z)] and TC = E[log q(z) - log prod_d q(z_d)] average to the exact values computed with the
    whole data set's aggregate posterior, within 0.35 nats (the estimator's log-of-an-average bias,
    about 0.25 here). Catches: the original code's weights (MI off by about log(N/M) = 2.8 nats, TC by 2)."""
    n, d, b = 1000, 4, 64
    q = _synthetic_posteriors(n, d, 0.01, seed=1)
    objective = BetaTC(dataset_size=n)
    g = torch.Generator().manual_seed(3)
    exact_mi, exact_tc, mi, tc = [], [], [], []
    for _ in range(200):
        idx = torch.randperm(n, generator=g)[:b]
        qb = DiagonalGaussian(q.mu[idx], q.logvar[idx])
        z = qb.mu + qb.std * torch.randn(b, d, generator=g, dtype=torch.float64)
        log_q_dims = _log_q_dims(q, z)
        log_qz = torch.logsumexp(log_q_dims.sum(2), 1) - math.log(n)
        log_prod = (torch.logsumexp(log_q_dims, 1) - math.log(n)).sum(1)
        own = qb.log_prob(z)
        exact_mi.append((own - log_qz).mean())
        exact_tc.append((log_qz - log_prod).mean())
        est_qz, est_prod = objective.log_aggregate_posteriors(qb, z)
        mi.append((own - est_qz).mean())
        tc.append((est_qz - est_prod).mean())
    mean = lambda values: torch.stack(values).mean().item()
    assert mean(mi) == pytest.approx(mean(exact_mi), abs=0.35)
    assert mean(tc) == pytest.approx(mean(exact_tc), abs=0.35)


def test_kl_schedules():
    kl = torch.tensor([0.1, 1.0, 2.0])
    assert LinearWarmup(100)(kl, 25).item() == pytest.approx(0.25 * 3.1)
    assert LinearWarmup(100)(kl, 500).item() == pytest.approx(3.1)
    cyc = Cyclical(cycles=4, ratio=0.5)
    cyc.setup(400)
    assert [cyc.weight(s) for s in (0, 25, 50, 99, 100, 125)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    assert FreeBits(0.5)(kl, 0).item() == pytest.approx(0.5 + 1.0 + 2.0)
    cap = Capacity(c_max=10.0, anneal_steps=100, gamma=2.0)
    assert cap(kl, 50).item() == pytest.approx(2.0 * abs(3.1 - 5.0))
    with pytest.raises(ConfigError):
        IWAE(k=5, kl_schedule=FreeBits(0.5))


def test_auroc_matches_the_rank_statistic():
    torch.manual_seed(7)
    inliers, outliers = torch.randn(300), torch.randn(200) + 1.0
    wins = (outliers.unsqueeze(1) > inliers.unsqueeze(0)).double().mean().item()
    assert auroc(inliers, outliers) == pytest.approx(wins, abs=1e-6)
    # scores in nats are large: the order alone must count
    assert auroc(inliers.double() * 0.1 + 500.0, outliers.double() * 0.1 + 500.0) == pytest.approx(wins, abs=1e-6)


def test_static_and_dynamic_binarization():
    from conftest import DATA_ROOT, MIRROR

    from vaelab.data.datamodule import ImageDataModule
    from vaelab.data.device_loader import DeviceBatches

    def datamodule(binarize):
        dm = ImageDataModule(name="mnist", shape=[1, 28, 28], root=str(DATA_ROOT), mirror=MIRROR, download=False,
                             val_size=1000, batch_size=500, binarize=binarize)
        dm.setup("fit")
        return dm

    static, dynamic = datamodule("static"), datamodule("dynamic")
    assert set(static.train_set.images.unique().tolist()) == {0, 255}
    def first_batch(epoch):
        images, labels = dynamic.train_set.images, dynamic.train_set.labels
        return next(iter(DeviceBatches(images, labels, 500, shuffle=False, binarize=True, current_epoch=lambda: epoch)))[0]
    x1 = first_batch(0)
    # fresh draws for each epoch, the same ones for the same epoch and batch (which a mid-epoch resume needs)
    assert set(x1.unique().tolist()) == {0.0, 1.0} and not torch.equal(x1, first_batch(1))
    assert torch.equal(x1, first_batch(0))
    assert torch.equal(next(iter(dynamic.train_dataloader()))[0], next(iter(dynamic.train_dataloader()))[0])
    # the evaluation images are drawn once, identically in every run
    assert torch.equal(dynamic.test_set.images, datamodule("dynamic").test_set.images)
    assert torch.equal(dynamic.test_set.images, static.test_set.images)
    # the mean of the binarized images is the mean intensity
    intensities = datamodule("none").test_set.images.double() / 255
    assert (static.test_set.images.double() / 255).mean().item() == pytest.approx(intensities.mean().item(), abs=2e-3)


def test_mutual_information_over_a_subsample_of_z_keeps_the_mixture_of_every_posterior():
    """Validation's cheaper estimate (``samples``): log q(z) averaged over the z of some images,
    the mixture q(z) still over all N posteriors. Sharp posteriors far apart: I(x; z) = log N for
    both (to the Monte-Carlo error of E log q(z|x), sd 0.04 for 3 dimensions and 500 z); overlapping
    ones: the subsample's estimates average to the full one. Catches: the mixture cut to the
    subsample too, or log q(z) normalised by the subsample's size (either gives log 500 = 6.2
    nats for log 2000 = 7.6)."""
    torch.manual_seed(2)
    n = 2000
    apart_mu, apart_logvar = torch.randn(n, 3) * 3, torch.full((n, 3), -10.0)
    for samples in (None, 500):
        estimate = mutual_information(apart_mu, apart_logvar, torch.Generator().manual_seed(0), samples=samples)
        assert estimate == pytest.approx(math.log(n), abs=0.2)
    mu, logvar = torch.randn(n, 4), torch.full((n, 4), -1.0)
    full = [mutual_information(mu, logvar, torch.Generator().manual_seed(seed)) for seed in range(5)]
    sub = [mutual_information(mu, logvar, torch.Generator().manual_seed(seed), samples=200) for seed in range(40)]
    assert sum(sub) / len(sub) == pytest.approx(sum(full) / len(full), abs=0.03)
