"""The disentanglement study's recipe end to end on the rendered dSprites (slow)."""

import json

import pytest
from conftest import DATA_ROOT, compose_config, read_metrics, run_cli, run_folders

from vaelab.train import train

pytestmark = pytest.mark.slow
TINY_METRICS = ["disentanglement.settings.mig_num_train=1000", "disentanglement.settings.dci_num_train=200",
                "disentanglement.settings.dci_num_test=100", "disentanglement.settings.sap_num_train=200",
                "disentanglement.settings.sap_num_test=100", "disentanglement.settings.factor_vae_num_train=50",
                "disentanglement.settings.factor_vae_num_eval=50", "disentanglement.settings.factor_vae_num_variance=500",
                "disentanglement.settings.beta_vae_num_train=50", "disentanglement.settings.beta_vae_num_eval=50"]
DISENT = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "factor_vae", "beta_vae")


def test_dsprites_beta_reports_the_disentanglement_metrics_after_training_and_in_eval(tmp_path):
    """experiment=dsprites_beta with disent_model=factor_vae (the manual-optimization path) for 20
    steps: the five metrics land in metrics.json after testing, each within its range, and
    ``vaelab.eval eval.tasks=[disentanglement]`` recomputes them on the checkpoint and draws the
    traversals labelled by factor."""
    train(compose_config(tmp_path, ["experiment=dsprites_beta", "disent_model=factor_vae", f"data.root={DATA_ROOT}",
                                    "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.accelerator=cpu",
                                    "trainer.enable_progress_bar=false", "callbacks.latent_embedding=null",
                                    "objective.discriminator.hidden=64", *TINY_METRICS]))
    metrics = read_metrics(tmp_path / "run")
    for name in DISENT:
        assert 0.0 <= metrics[f"disent/{name}"] <= 1.0, name
    assert metrics["about"]["disent/mig"].startswith("0..1; the mutual information gap")
    evaluated = run_cli("vaelab.eval", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                        f"data.root={DATA_ROOT}", "eval.tasks=[disentanglement]",
                                        "disentanglement.metrics=[mig,sap]", *TINY_METRICS, "trainer.accelerator=cpu",
                                        "trainer.enable_progress_bar=false"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (run,) = run_folders(tmp_path, "eval")
    scores = json.loads((run / "metrics.json").read_text())
    assert set(k for k in scores if k.startswith("disent/")) == {"disent/mig", "disent/sap"}
    assert (run / "latent_traversals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
