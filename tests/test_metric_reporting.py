"""Which metrics a run reports, and what it says they are: a metric that does not apply to the
model is absent, and the console, metrics.json and TensorBoard describe each one alike."""

import logging
import math

import lightning as L
import pytest
import torch
from conftest import DATA_ROOT, compose_config, read_metrics, tensorboard_events

from vaelab.callbacks.images import LatentImages
from vaelab.metric_info import RunFacts, describe
from vaelab.train import train

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "callbacks.latent_embedding=null"]


@pytest.mark.parametrize(("overrides", "reported"), [
    (["likelihood=bernoulli"], False),  # grey levels: the classic example's relaxation, not a code length
    (["likelihood=bernoulli", "data.binarize=static"], True),
    (["likelihood=discretized_logistic", "model=conv"], True),
    (["likelihood=gaussian"], False),  # a density
])
def test_bits_per_dim_only_where_the_likelihood_is_a_probability_mass_over_the_data(tmp_path, overrides, reported):
    """Catches: bpd emitted for every 'discrete-looking' likelihood (Bernoulli on grey levels gave a
    bpd of 0.19, five times better than any real 8-bit MNIST model), or a bpd not equal to NLL / (D ln 2)."""
    metrics = train(compose_config(tmp_path, [*FAST, *overrides]))
    for stage in ("val", "test"):
        assert (f"{stage}/bpd" in metrics) == reported
        if reported:
            assert metrics[f"{stage}/bpd"] == pytest.approx(metrics[f"{stage}/nelbo"] / (784 * math.log(2)), rel=1e-6)
    about = read_metrics(tmp_path / "run")["about"]
    assert ("not a code length" in about["test/nelbo"]) == (not reported)


class SetLayer(L.Callback):
    """Multiplies a linear layer of the VAE (found by ``path``) by ``scale``; with ``bias`` set, the
    bias is that constant."""

    def __init__(self, path: str, scale: float = 0.0, bias: float | None = 0.0):
        self.path, self.scale, self.bias = path, scale, bias

    def on_fit_start(self, trainer, pl_module):
        layer = pl_module.vae.get_submodule(self.path)
        with torch.no_grad():
            layer.weight.mul_(self.scale)
            if self.bias is not None:
                layer.bias.fill_(self.bias)


def test_a_collapsed_upper_layer_of_the_ladder_is_reported(tmp_path, caplog):
    """q(z2|x) = N(0, ~1) for every x (its net's output layer zeroed, lr 0): the upper layer's KL is
    ~0 while the lower one carries information (the encoder's output layer scaled up). Catches: a collapse check on the decoder's Gaussian
    alone (it has active units and several nats), which never sees a collapsed upper layer."""
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        metrics = train(compose_config(tmp_path, [*FAST, "model=hierarchical", "optimizer.lr=0",
                                                  "optimizer.fused=false"]),
                        extra_callbacks=[SetLayer("ladder.bottom_up_net.2"), SetLayer("encoder.head", 20.0, None)])
    assert metrics["val/kl_z2"] < 0.1 < metrics["val/kl_z1"] and metrics["val/active_units"] > 0
    warnings = [r.getMessage() for r in caplog.records if "posterior has collapsed" in r.getMessage()]
    assert any("val/kl_z2" in w for w in warnings) and not any("val/kl_z1" in w for w in warnings)
    assert "val/kl_per_dim" not in read_metrics(tmp_path / "run")  # not the ladder's KL


def test_a_vampprior_reports_its_own_kl_and_no_per_dimension_kl(tmp_path, caplog):
    """Every image's q(z|x) is N(1, ~1) (the encoder's output layer set to a constant) and the
    VampPrior is the average of those same posteriors, so the model's KL is 0, while the KL against
    N(0, I) would be ~10 nats. Catches: per-dimension KL or the collapse warning computed against
    N(0, I) whatever the prior (the warning would never fire, and kl_per_dim would sum to ~10)."""
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        train(compose_config(tmp_path, [*FAST, "prior=vamp", "model.prior.components=5", "optimizer.lr=0",
                                        "optimizer.fused=false"]),
              extra_callbacks=[SetLayer("encoder.head", bias=1.0)])
    metrics = read_metrics(tmp_path / "run")
    assert abs(metrics["val/kl"]) < 0.01 and "val/kl_per_dim" not in metrics and "test/kl_per_dim" not in metrics
    assert any("posterior has collapsed (val/kl" in r.getMessage() for r in caplog.records)
    images = tensorboard_events(tmp_path / "run" / "tensorboard").PluginTagToContent("images")
    assert "images/traversals" in images and "latent/kl_per_dim" not in images


def test_traversals_move_the_dimensions_whose_posterior_means_vary_most():
    """Catches: choosing traversal rows by KL(q || N(0, I)), which is not the model's KL for flows,
    mixture priors or the ladder (here the dimension with the largest such KL varies least)."""

    class Vae:
        latent_dim, conditional, device = 3, False, torch.device("cpu")

        def encode(self, x, y=None):
            n = len(x)
            mu = torch.stack([torch.linspace(-1, 1, n), torch.full((n,), 4.0), 2 * torch.linspace(-1, 1, n)], 1)
            return type("Q", (), {"mu": mu})()

        def decode(self, z, y=None):
            return z[:, :, None, None].expand(-1, 3, 2, 2)  # image = its latents, to read back the rows

        sample_prior = lambda self, n, generator: torch.zeros(n, 3)  # noqa: E731
        interpolate = lambda self, a, b, steps, y=None: torch.zeros(len(a), steps, 3, 2, 2)  # noqa: E731

    class Data:
        val_set = None
        examples = lambda self, n, split: (torch.zeros(n, 3, 2, 2), torch.zeros(n, dtype=torch.long))  # noqa: E731

    callback = LatentImages(num_examples=4, traversal_dims=2, traversal_steps=3, ranking_images=50)
    grids = {grid.tag: grid.images for grid in callback.grids(Data(), Vae())}
    moved = grids["traversals"][:, :, 0, 0].view(2, 3, 3).std(1).argmax(1)  # the latent that changes in each row
    assert moved.tolist() == [2, 0]


def test_every_logged_metric_is_described_and_the_readme_names_it():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### What is logged", 1)[1].split("\n## ", 1)[0]
    names = ["train/loss", "train/recon", "train/kl", "train/kl_z1", "train/kl_z2", "train/classifier_ce", "train/mi",
             "train/tc", "train/dwkl", "val/nelbo", "val/recon", "val/kl", "val/kl_z1", "val/kl_z2", "test/nll_iw",
             "test/bpd", "val/active_units", "val/mi", "val/kl_per_dim", "test/error", "anomaly/auroc_nelbo"]
    for name in names:
        assert describe(name, RunFacts()), name
        assert f"`{name}`" in section, f"the README's What is logged does not name {name}"
    assert "before the flow" in describe("val/mi", RunFacts(latent="flow"))
    assert "before the flow" not in describe("val/mi", RunFacts())
    assert "not a code length" in describe("test/nll_iw", RunFacts(code_length=False))
