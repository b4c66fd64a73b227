"""The LightningModule: encoder, decoder, likelihood and objective of one VAE.

It is built from the run's resolved config (``model``, ``likelihood``,
``objective``, ``optimizer``, ``scheduler``, ``compile`` and ``data.shape``), which
is saved in every checkpoint, so ``VAEModule.load_from_checkpoint(path)`` rebuilds
the same model with no other file.

The training step never waits for the device: the terms are accumulated on the device
(``metrics.TermMeans``) and read at epoch end; per-step values are logged only every
``trainer.log_every_n_steps`` steps. With ``compile`` on, the deterministic part of the
step (encoder, decoder, likelihood and KL, given the noise eps) goes through
``torch.compile``; the eager path computes exactly the same function.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from vaelab.errors import ConfigError, instantiate
from vaelab.metrics import TermMeans
from vaelab.objectives import Terms
from vaelab.posteriors import DiagonalGaussian

TERMS = ("loss", "recon", "kl")
EVAL_TERMS = ("nelbo", "recon", "kl")


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
        self.channels_last = bool(config["model"].get("channels_last", False))
        self.compile_mode = config.get("compile", "auto")
        if self.compile_mode not in (True, False, "auto"):
            raise ConfigError(f"compile must be auto, true or false, got {self.compile_mode!r}")
        self._terms_given_noise = self._eager_terms_given_noise
        # ("train" cannot be a ModuleDict key: it is a method of nn.Module)
        self.epoch_means = nn.ModuleDict(
            {"fit": TermMeans(TERMS), "val": TermMeans(EVAL_TERMS), "test": TermMeans(EVAL_TERMS)}
        )

    def configure_model(self) -> None:
        """Called by Lightning before each fit/test: memory format and compilation for the run's device."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        # (also called by load_from_checkpoint, with no trainer attached)
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        on_gpu = device.type == "cuda"
        if self.compile_mode is True or (self.compile_mode == "auto" and on_gpu):
            self._terms_given_noise = torch.compile(self._eager_terms_given_noise, mode=self.config.get("compile_mode"))

    # --- the model -------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        # the densities are computed in float32 even when the nets run in bf16 (trainer.precision=bf16-mixed)
        return DiagonalGaussian.from_encoder_output(self.encoder(x).float())

    def decoder_params(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).float()

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] as an image in [0, 1]."""
        return self.likelihood.mean(self.decoder_params(z))

    def _eager_terms_given_noise(self, x: torch.Tensor, eps: torch.Tensor) -> Terms:
        q = self.posterior(x)
        z = q.mu + q.std * eps  # the reparameterization trick
        return self.objective(self.likelihood.nll(self.decoder_params(z), x), q.kl_standard_normal())

    def terms(self, x: torch.Tensor) -> Terms:
        """The objective's terms for a batch, with one sample z ~ q(z|x) per image."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        eps = torch.randn(len(x), self.latent_dim, device=x.device, dtype=x.dtype)
        return self._terms_given_noise(x, eps)

    # --- Lightning hooks ---------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, _ = batch
        t = self.terms(x)
        values = {"loss": t.loss, "recon": t.recon, "kl": t.kl}
        self.epoch_means["fit"].update(values, len(x))
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/{k}_step": v for k, v in values.items()}, on_step=True, on_epoch=False)
        return t.loss

    def _evaluate(self, batch, stage: str) -> None:
        """Validation and test report the true ELBO (beta = 1) whatever beta is trained with."""
        x, _ = batch
        t = self.terms(x)
        self.epoch_means[stage].update({"nelbo": t.nelbo, "recon": t.recon, "kl": t.kl}, len(x))

    def _log_epoch_means(self, stage: str, prefix: str) -> None:
        self.log_dict(self.epoch_means[stage].compute_and_reset(prefix), on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_means("fit", "train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val", "val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test", "test")

    def configure_optimizers(self):
        optimizer = instantiate(self.config["optimizer"])(params=self.parameters())
        scheduler_cfg = self.config.get("scheduler")
        if not scheduler_cfg:
            return optimizer
        scheduler = instantiate(scheduler_cfg["scheduler"])(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {**scheduler_cfg.get("lightning", {}), "scheduler": scheduler}}
