"""Checkpoints rebuild their model alone, including those written before the VAE was split from
the LightningModule (tests/data/mlp_iaf_before_split.ckpt: vaelab 0.1.0 at commit 838facb, an MLP
784-16-2 with a two-step IAF posterior, three training steps)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA_ROOT, compose_config, read_metrics

import vaelab
from vaelab.checkpoints import load_module
from vaelab.errors import VaelabError
from vaelab.posteriors import bound_logvar
from vaelab.train import train

OLD = Path(__file__).parent / "data" / "mlp_iaf_before_split.ckpt"
OLD_MODEL = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", f"data.root={DATA_ROOT}",
             "model.latent_dim=2", "model.encoder.hidden=[16]", "model.decoder.hidden=[16]", "posterior=iaf",
             "model.posterior.hidden=8", "callbacks.latent_embedding=null"]


def test_a_checkpoint_from_before_the_split_loads_as_a_vae():
    """Its weights land in the VAE's parts: the posterior mean equals the one computed by hand from
    the old file's own tensors (Linear 784-16, ReLU, Linear 16-(2 mu, 2 logvar, context))."""
    vae = vaelab.load(OLD)
    assert not vae.training and type(vae.posterior).__name__ == "IAFPosterior"
    state = torch.load(OLD, weights_only=False)["state_dict"]
    x = torch.rand(5, 1, 28, 28)
    hidden = F.relu(x.flatten(1) @ state["encoder.body.2.weight"].T + state["encoder.body.2.bias"])
    h = hidden @ state["encoder.head.weight"].T + state["encoder.head.bias"]
    q = vae.encode(x)
    torch.testing.assert_close(q.mu, h[:, :2])
    torch.testing.assert_close(q.logvar, bound_logvar(h[:, 2:4]))
    torch.testing.assert_close(vae.posterior.flow[1].made.out.weight, state["flow.flow.1.made.out.weight"])
    assert vae.sample(4).shape == (4, 1, 28, 28)


def test_a_checkpoint_from_before_the_split_resumes_training(tmp_path):
    train(compose_config(tmp_path, [*OLD_MODEL, "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
                                    "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", f"ckpt_path={OLD}"]))
    metrics = read_metrics(tmp_path / "run")
    assert metrics["global_step"] == 6 and metrics["epochs"] == 2  # it went on from step 3
    module = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert set(module.state_dict()) == set(torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt",
                                                      weights_only=False)["state_dict"])


def test_load_takes_a_run_folder_and_refuses_what_is_not_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(OLD.read_bytes())
    assert vaelab.load(run).latent_dim == 2
    with pytest.raises(VaelabError, match="holds no checkpoints/best.ckpt"):
        vaelab.load(tmp_path)
    with pytest.raises(VaelabError, match="checkpoint not found"):
        vaelab.load(tmp_path / "missing.ckpt")
    (tmp_path / "truncated.ckpt").write_bytes(OLD.read_bytes()[:1000])
    with pytest.raises(VaelabError, match="truncated.ckpt is not a checkpoint, or is truncated or corrupt"):
        vaelab.load(tmp_path / "truncated.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.ckpt")
    with pytest.raises(VaelabError, match="foreign.ckpt is not a vaelab checkpoint"):
        vaelab.load(tmp_path / "foreign.ckpt")
