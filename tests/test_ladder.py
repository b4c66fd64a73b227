"""The two-layer ladder latents against independent computations: torch.distributions, the
explicit precision-weighted formula, closed-form KLs against Monte Carlo."""

import pytest
import torch
from conftest import compose_config
from torch.distributions import Normal, kl_divergence

from vaelab.errors import ConfigError, instantiate
from vaelab.nets.ladder import LadderLatents
from vaelab.posteriors import bound_logvar

D1, D2 = 3, 2


def make_ladder(seed: int = 0) -> LadderLatents:
    """A small float64 ladder whose output biases are shifted, so that the means are away from 0
    and the variances away from 1 (a wrong formula then shows in the numbers)."""
    torch.manual_seed(seed)
    ladder = LadderLatents(D1, D2, hidden=16).double()
    with torch.no_grad():
        for net in (ladder.bottom_up_net, ladder.top_down_net):
            net[-1].bias.add_(0.8 * torch.randn_like(net[-1].bias))
    return ladder


def reference(ladder: LadderLatents, h: torch.Tensor, eps: torch.Tensor) -> dict:
    """Everything recomputed by hand from the ladder's two sub-networks and the paper's formulas."""
    eps1, eps2 = eps[..., :D1], eps[..., D1:]
    mu_d1, raw_d1 = h.chunk(2, dim=-1)
    var_d1 = bound_logvar(raw_d1).exp()
    mu_d2, raw_d2 = ladder.bottom_up_net(h).chunk(2, dim=-1)
    sd_d2 = bound_logvar(raw_d2).exp().sqrt()
    z2 = mu_d2 + sd_d2 * eps2
    mu_p, raw_p = ladder.top_down_net(z2).chunk(2, dim=-1)
    var_p = bound_logvar(raw_p).exp()
    var_q = 1.0 / (1.0 / var_d1 + 1.0 / var_p)
    mu_q = var_q * (mu_d1 / var_d1 + mu_p / var_p)
    z1 = mu_q + var_q.sqrt() * eps1
    q_z2, p_z2 = Normal(mu_d2, sd_d2), Normal(torch.zeros_like(z2), torch.ones_like(z2))
    q_z1, p_z1 = Normal(mu_q, var_q.sqrt()), Normal(mu_p, var_p.sqrt())
    return {
        "z1": z1, "z2": z2, "mu_q": mu_q, "var_q": var_q, "mu_p": mu_p, "var_p": var_p,
        "log_q": q_z2.log_prob(z2).sum(-1) + q_z1.log_prob(z1).sum(-1),
        "log_p": p_z2.log_prob(z2).sum(-1) + p_z1.log_prob(z1).sum(-1),
        "kl_z1": kl_divergence(q_z1, p_z1).sum(-1).mean(0),
        "kl_z2": kl_divergence(q_z2, Normal(0.0, 1.0)).sum(-1),
    }


def test_samples_and_log_densities_match_torch_normal_and_the_precision_weighted_formula():
    ladder = make_ladder(0)
    torch.manual_seed(1)
    h, eps = 1.5 * torch.randn(4, 2 * D1, dtype=torch.float64), torch.randn(5, 4, D1 + D2, dtype=torch.float64)
    out, ref = ladder(h, eps), reference(ladder, h, eps)
    torch.testing.assert_close(out.z, ref["z1"])
    torch.testing.assert_close(out.log_q, ref["log_q"])
    torch.testing.assert_close(out.log_p, ref["log_p"])
    torch.testing.assert_close(out.layer_kl["z1"], ref["kl_z1"])
    torch.testing.assert_close(out.layer_kl["z2"], ref["kl_z2"])
    assert out.kl_per_dim is None
    # the four Gaussians the module exposes, against the explicit formulas
    t = ladder.layers(h, eps)
    torch.testing.assert_close(t.z2, ref["z2"])
    torch.testing.assert_close(t.p_z1.mu, ref["mu_p"])
    torch.testing.assert_close(t.p_z1.logvar.exp(), ref["var_p"])
    torch.testing.assert_close(t.q_z1.mu, ref["mu_q"])
    torch.testing.assert_close(t.q_z1.logvar.exp(), ref["var_q"])
    # the combination really mixes both sides: q(z1|x, z2) is neither the bottom-up nor the top-down Gaussian
    assert (t.q_z1.mu - t.bottom_up.mu).abs().max() > 0.05 and (t.q_z1.mu - t.p_z1.mu).abs().max() > 0.05
    assert (t.q_z1.logvar < torch.minimum(t.bottom_up.logvar, t.p_z1.logvar)).all()
    # the mean posterior is q(z1|x, z2 = mu_d2): the same formulas with eps2 = 0
    mean_ref = reference(ladder, h, torch.zeros(1, 4, D1 + D2, dtype=torch.float64))
    torch.testing.assert_close(out.base.mu, mean_ref["mu_q"][0])
    torch.testing.assert_close(out.base.logvar.exp(), mean_ref["var_q"][0])


def test_closed_form_layer_kls_match_monte_carlo():
    ladder = make_ladder(2)
    torch.manual_seed(3)
    h = 1.5 * torch.randn(3, 2 * D1, dtype=torch.float64)
    s = 200_000
    with torch.no_grad():
        # z2 held at mu_d2 (eps2 = 0): the z1 KL is one closed form, estimated by MC over z1 alone
        eps = torch.randn(s, 3, D1 + D2, dtype=torch.float64)
        eps[..., D1:] = 0.0
        t = ladder.layers(h, eps)
        mc_z1 = (t.q_z1.log_prob(t.z1) - t.p_z1.log_prob(t.z1)).mean(0)
        torch.testing.assert_close(ladder(h, eps[:1]).layer_kl["z1"], mc_z1, atol=0.02, rtol=0.01)
        # z2: MC over the top layer against KL(q(z2|x) || N(0, I))
        eps = torch.randn(s, 3, D1 + D2, dtype=torch.float64)
        out = ladder(h, eps)
        t = ladder.layers(h, eps)
        mc_z2 = (t.q_z2.log_prob(t.z2) - Normal(0.0, 1.0).log_prob(t.z2).sum(-1)).mean(0)
        torch.testing.assert_close(out.layer_kl["z2"], mc_z2, atol=0.02, rtol=0.01)
        # the two layers together: the total KL is the MC mean of log q - log p
        total = out.layer_kl["z1"] + out.layer_kl["z2"]
        torch.testing.assert_close(total, (out.log_q - out.log_p).mean(0), atol=0.03, rtol=0.01)
        torch.testing.assert_close(out.kl, total)
    for kl in out.layer_kl.values():
        assert torch.isfinite(kl).all() and (kl >= 0).all()
    # both layers carry real information here, so the checks above could tell formulas apart
    assert (out.layer_kl["z1"] > 0.1).all() and (out.layer_kl["z2"] > 0.1).all()


def test_z_is_reparameterized_and_gradients_reach_every_parameter():
    ladder = make_ladder(4)
    torch.manual_seed(5)
    h = torch.randn(4, 2 * D1, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(3, 4, D1 + D2, dtype=torch.float64, requires_grad=True)
    out = ladder(h, eps)
    # z moves with both halves of the noise: eps1 directly, eps2 through z2 and the top-down prior
    moved1 = eps.detach().clone()
    moved1[..., :D1] += 0.5
    moved2 = eps.detach().clone()
    moved2[..., D1:] += 0.5
    assert (ladder(h, moved1).z - out.z).abs().min() > 1e-4
    assert (ladder(h, moved2).z - out.z).abs().max() > 1e-3
    (dz_deps,) = torch.autograd.grad(out.z.sum(), eps, retain_graph=True)
    assert (dz_deps[..., :D1] > 0).all() and dz_deps[..., D1:].abs().max() > 1e-4
    (out.log_q - out.log_p).mean().backward()
    for name, p in ladder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"no gradient reaches {name}"
    assert h.grad.abs().max() > 0


def test_shapes_with_several_samples_and_a_reproducible_prior_sample():
    ladder = make_ladder(6)
    assert ladder.in_features == 2 * D1 and ladder.noise_dim == D1 + D2
    h = torch.randn(4, 2 * D1, dtype=torch.float64)
    out = ladder(h, torch.randn(7, 4, D1 + D2, dtype=torch.float64))
    assert out.z.shape == (7, 4, D1)
    assert out.log_q.shape == (7, 4) and out.log_p.shape == (7, 4)
    assert set(out.layer_kl) == {"z1", "z2"} and all(v.shape == (4,) for v in out.layer_kl.values())
    assert out.base.mu.shape == (4, D1) and out.base.logvar.shape == (4, D1) and out.kl.shape == (4,)

    z = ladder.sample_prior(10, torch.Generator().manual_seed(0))
    assert z.shape == (10, D1) and z.dtype == torch.float64
    torch.testing.assert_close(z, ladder.sample_prior(10, torch.Generator().manual_seed(0)), rtol=0, atol=0)
    assert not torch.equal(z, ladder.sample_prior(10, torch.Generator().manual_seed(1)))
    # z2 ~ N(0, I), then z1 = mu_p(z2) + sigma_p(z2) * eps1, from the same seeded noise
    noise = torch.randn(10, D1 + D2, generator=torch.Generator().manual_seed(0)).double()
    mu_p, raw_p = ladder.top_down_net(noise[:, D1:]).chunk(2, dim=-1)
    torch.testing.assert_close(z, mu_p + (0.5 * bound_logvar(raw_p)).exp() * noise[:, :D1])


def test_bad_dimensions_fail_with_a_config_error():
    with pytest.raises(ConfigError, match="model.latent_dim must be >= 1, got 0"):
        LadderLatents(0, 4)
    with pytest.raises(ConfigError, match="model.ladder.top_dim must be >= 1"):
        LadderLatents(4, 0)
    with pytest.raises(ConfigError, match="same model.latent_dim"):
        LadderLatents(4, 2)(torch.randn(2, 6), torch.randn(1, 2, 6))


def test_the_hierarchical_config_builds_a_ladder_that_fits_its_encoder_and_decoder(tmp_path):
    cfg = compose_config(tmp_path, ["data=mnist", "model=hierarchical"])
    ladder = instantiate(cfg.model.ladder)
    assert isinstance(ladder, LadderLatents) and (ladder.latent_dim, ladder.top_dim) == (32, 16)
    encoder = instantiate(cfg.model.encoder)()
    decoder = instantiate(cfg.model.decoder)(out_channels=1)
    h = encoder(torch.rand(2, *cfg.data.shape))
    assert h.shape == (2, ladder.in_features)
    out = ladder(h, torch.randn(3, 2, ladder.noise_dim))
    assert decoder(out.z.reshape(6, -1)).shape == (6, *cfg.data.shape)
    assert torch.isfinite(out.log_q - out.log_p).all()
