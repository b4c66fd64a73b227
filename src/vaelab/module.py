"""The LightningModule: encoder, decoder, likelihood and objective of one VAE.

It is built from the run's resolved config (``model``, ``likelihood``,
``objective``, ``optimizer``, ``scheduler`` and ``data.shape``), which is saved
in every checkpoint, so ``VAEModule.load_from_checkpoint(path)`` rebuilds the
same model with no other file.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from vaelab.errors import instantiate

from vaelab.objectives import Terms
from vaelab.posteriors import DiagonalGaussian


class VAEModule(L.LightningModule):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.config = config
        shape = config["data"]["shape"]
        self.latent_dim = int(config["model"]["latent_dim"])
        self.likelihood = instantiate(config["likelihood"])
        self.encoder = instantiate(config["model"]["encoder"])
        self.decoder = instantiate(config["model"]["decoder"], out_channels=self.likelihood.param_channels(shape[0]))
        self.objective = instantiate(config["objective"])

    # --- the model -------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_encoder_output(self.encoder(x))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] as an image in [0, 1]."""
        return self.likelihood.mean(self.decoder(z))

    def terms(self, x: torch.Tensor) -> Terms:
        q = self.posterior(x)
        z = q.rsample()
        return self.objective(self.likelihood.nll(self.decoder(z), x), q.kl_standard_normal())

    # --- Lightning hooks ---------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, _ = batch
        t = self.terms(x)
        self.log_dict(
            {"train/loss": t.loss, "train/recon": t.recon, "train/kl": t.kl},
            on_step=True, on_epoch=True, batch_size=len(x),
        )
        return t.loss

    def _evaluate(self, batch, stage: str) -> None:
        """Validation and test report the true ELBO (beta = 1) whatever beta is trained with."""
        x, _ = batch
        t = self.terms(x)
        self.log_dict(
            {f"{stage}/nelbo": t.nelbo, f"{stage}/recon": t.recon, f"{stage}/kl": t.kl},
            on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True,
        )

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        optimizer = instantiate(self.config["optimizer"])(params=self.parameters())
        scheduler_cfg = self.config.get("scheduler")
        if not scheduler_cfg:
            return optimizer
        scheduler = instantiate(scheduler_cfg["scheduler"])(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {**scheduler_cfg.get("lightning", {}), "scheduler": scheduler}}
