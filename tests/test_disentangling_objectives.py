"""FactorVAE's permutation, discriminator and TC estimate, and DIP-VAE's covariance penalty."""

import pytest
import torch

from vaelab.latents import LatentSample
from vaelab.objectives import (
    DIPVAE,
    FactorVAE,
    TCDiscriminator,
    covariance,
    dip_regularizer,
    permute_dims,
)
from vaelab.posteriors import DiagonalGaussian


def sample_of(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor | None = None) -> LatentSample:
    """A LatentSample of the Gaussian posterior N(mu, exp(logvar)) with the closed-form KL."""
    q = DiagonalGaussian(mu, logvar)
    z = mu if z is None else z
    return LatentSample(z=z.unsqueeze(0), log_q=q.log_prob(z).unsqueeze(0), log_p=torch.zeros(1, len(mu)), base=q,
                        kl_per_dim=q.kl_standard_normal_per_dim())


def test_permute_dims_keeps_each_marginal_and_breaks_the_dependence():
    """Catches: one permutation for all dimensions (z[perm] keeps the correlation 1), a shuffle
    across dimensions instead of across the batch (the marginals change)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=generator)
    z = torch.stack([x, x, -x, torch.randn(4000, generator=generator)], dim=1)  # dims 0-2 fully dependent
    permuted = permute_dims(z, generator)
    assert torch.equal(permuted.sort(dim=0).values, z.sort(dim=0).values)  # every column: the same values
    correlation = torch.corrcoef(permuted.T)
    off_diagonal = correlation - torch.diag(correlation.diagonal())
    assert off_diagonal.abs().max() < 4 / 4000**0.5  # independent up to sampling noise
    assert not torch.equal(permute_dims(z, generator), permuted)  # a fresh draw each call


def test_the_density_ratio_estimate_finds_the_tc_of_a_correlated_gaussian():
    """z ~ N(0, S) has TC = KL(N(0, S) || N(0, diag S)) = 1/2 (sum_d log S_dd - log det S) = 0.735
    nats. A small discriminator trained briefly (300 steps) on z against permute_dims(z') recovers
    it, as mean log D / (1 - D), within 0.07 (a little below: 0.70-0.72 over seeds). Catches: the log ratio's sign (or the labels) swapped (-0.73),
    the probability D in place of its log odds, the two batches permuted alike (nothing to learn: 0)."""
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.6], [0.5, 0.6, 1.0]])
    true_tc = 0.5 * (cov.diagonal().log().sum() - torch.logdet(cov))
    assert true_tc.item() == pytest.approx(0.7348, abs=1e-4)
    factor = torch.linalg.cholesky(cov)
    generator = torch.Generator().manual_seed(0)

    def draw(n):
        return torch.randn(n, 3, generator=generator) @ factor.T

    discriminator = TCDiscriminator(3, hidden=32, layers=2)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=5e-3)
    decay = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.02, total_iters=300)  # to settle the estimate
    for _ in range(300):
        loss = discriminator.loss(draw(1024), draw(1024), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
    objective = FactorVAE(gamma=1.0, discriminator=discriminator)
    z = draw(50_000)
    with torch.no_grad():
        terms = objective(sample_of(z, torch.zeros_like(z)), torch.zeros(1, len(z)))
    assert terms.extra["tc"].item() == pytest.approx(true_tc.item(), abs=0.07)


def test_factor_vae_loss_adds_gamma_times_the_tc_estimate_and_trains_only_through_z():
    """loss = recon + KL + gamma * mean(logit_0 - logit_1); the VAE loss reaches the encoder through
    z, the discriminator's loss does not (z detached). Catches: gamma on the KL instead, the KL
    dropped, a discriminator loss that pushes gradients into the encoder."""
    torch.manual_seed(1)
    mu = torch.randn(32, 4, requires_grad=True)
    logvar = torch.full((32, 4), -1.0)
    z = mu + 0.1 * torch.randn(32, 4)
    discriminator = TCDiscriminator(4, hidden=16, layers=2)
    objective = FactorVAE(gamma=7.0, discriminator=discriminator)
    log_px = -torch.rand(1, 32) * 100
    terms = objective(sample_of(mu, logvar, z), log_px)
    logits = discriminator(z)
    kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean()
    expected = -log_px.mean() + kl + 7.0 * (logits[:, 0] - logits[:, 1]).mean()
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.kl.item() == pytest.approx(kl.item(), rel=1e-6)
    terms.loss.backward()
    assert mu.grad.abs().sum() > 0
    mu.grad = None
    discriminator.loss(z, z.flip(0)).backward()
    assert mu.grad is None and all(p.grad is not None for p in discriminator.parameters())


def hadamard_code() -> torch.Tensor:
    """Four points whose batch covariance (divided by B = 4) is exactly the identity in 2-D."""
    return torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def test_the_dip_penalty_is_zero_at_identity_covariance_and_hand_computed_otherwise():
    """covariance: E[x x^T] - E[x] E[x]^T (over B, not B - 1). Hand computations:
    diag(4, 1) -> lambda_d (4 - 1)^2; [[1, 1], [1, 1]] -> lambda_od (1^2 + 1^2). Catches: the
    unbiased covariance (identity becomes 4/3 I, not zero), the off-diagonal counted once, the two
    weights exchanged, squares dropped."""
    assert torch.equal(covariance(hadamard_code()), torch.eye(2))
    assert dip_regularizer(covariance(hadamard_code()), 3.0, 5.0).item() == 0.0
    stretched = hadamard_code() * torch.tensor([2.0, 1.0])  # variance 4 along dimension 0
    assert dip_regularizer(covariance(stretched), 3.0, 5.0).item() == pytest.approx(5.0 * 9)
    together = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])  # covariance [[1, 1], [1, 1]]
    assert dip_regularizer(covariance(together), 3.0, 5.0).item() == pytest.approx(3.0 * 2)
    shrunk = hadamard_code() * 0.5  # covariance I / 4: both kinds at once
    assert dip_regularizer(covariance(shrunk), 3.0, 5.0).item() == pytest.approx(5.0 * 2 * 0.75**2)


def test_dip_vae_i_penalizes_the_means_and_dip_vae_ii_adds_the_posterior_variances():
    """DIP-I: Cov[mu]; DIP-II: Cov[mu] + mean diag(sigma^2). With Cov[mu] = 0.75 I and sigma^2 =
    0.25 DIP-II is at the identity (penalty 0) while DIP-I is not (2 lambda_d 0.25^2). Catches:
    DIP-II without the variances, DIP-I with them, the penalty left out of the loss."""
    mu = hadamard_code() * 0.75**0.5
    logvar = torch.full((4, 2), 0.25).log()
    sample, log_px = sample_of(mu, logvar), torch.full((1, 4), -10.0)
    dip_i = DIPVAE("i", lambda_od=2.0, lambda_d=20.0)(sample, log_px)
    dip_ii = DIPVAE("ii", lambda_od=2.0, lambda_d=20.0)(sample, log_px)
    assert dip_ii.extra["dip"].item() == pytest.approx(0.0, abs=1e-6)
    assert dip_i.extra["dip"].item() == pytest.approx(20.0 * 2 * 0.25**2)
    kl = (0.5 * (mu**2 + 0.25 - 1 - logvar)).sum(1).mean()
    assert dip_i.loss.item() == pytest.approx(10.0 + kl.item() + 20.0 * 2 * 0.25**2, rel=1e-6)
    assert dip_ii.loss.item() == pytest.approx(10.0 + kl.item(), rel=1e-6)
    assert dip_i.nelbo.item() == pytest.approx(10.0 + kl.item(), rel=1e-6)


def test_the_factor_vae_config_builds_the_paper_discriminator_and_optimizer(tmp_path):
    """objective=factor_vae: the paper's 6 x 1000 discriminator on the model's latents, its own Adam."""
    from conftest import compose_config

    from vaelab.errors import instantiate

    cfg = compose_config(tmp_path, ["objective=factor_vae", "model.latent_dim=10"])
    objective = instantiate(cfg.objective)
    linear = [m for m in objective.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    optimizer = objective.discriminator_optimizer(objective.discriminator.parameters())
    assert optimizer.defaults["lr"] == 1e-4 and tuple(optimizer.defaults["betas"]) == (0.5, 0.9)


def test_factor_vae_trains_its_discriminator_by_its_own_optimizer_and_checkpoints_both(tmp_path):
    """Five training steps with objective=factor_vae: the discriminator learns (its weights move) by its
    own optimizer, the VAE's optimizer holds the VAE's parameters only, global_step counts the VAE's
    steps, and the checkpoint carries both optimizers' states, from which a resumed run goes on.
    Catches: a discriminator that is never stepped, its parameters in the VAE's optimizer (the TC
    term would then train the discriminator to shrink the TC estimate), or steps counted twice."""
    import lightning as L
    from conftest import DATA_ROOT, compose_config, read_metrics

    from vaelab.train import train

    class Snapshot(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.before = [p.detach().clone() for p in pl_module.discriminator.parameters()]

    fast = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "objective=factor_vae", "objective.discriminator.hidden=32",
            "objective.discriminator.layers=2", "callbacks.latent_embedding=null"]
    snapshot = Snapshot()
    metrics = train(compose_config(tmp_path / "a", [*fast, "trainer.max_epochs=1"]), extra_callbacks=[snapshot])
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    discriminator = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("discriminator.")}
    assert checkpoint["global_step"] == 5 and "train/tc" in metrics
    assert any(not torch.equal(before, discriminator[k]) for before, k in zip(snapshot.before, discriminator))
    vae_state, discriminator_state = checkpoint["optimizer_states"]
    vae_sizes = sorted(tuple(v.shape) for k, v in checkpoint["state_dict"].items() if k.startswith("vae."))
    assert sorted(tuple(s["exp_avg"].shape) for s in vae_state["state"].values()) == vae_sizes
    assert sorted(tuple(s["exp_avg"].shape) for s in discriminator_state["state"].values()) == \
        sorted(tuple(v.shape) for v in discriminator.values())
    train(compose_config(tmp_path / "b", [*fast, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert read_metrics(tmp_path / "b" / "run")["global_step"] == 10
