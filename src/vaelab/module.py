"""The LightningModule: encoder, decoder, likelihood and objective of one VAE.

It is built from the run's resolved config (``model``, ``likelihood``, ``objective``,
``kl_schedule``, ``optimizer``, ``scheduler``, ``compile``, ``eval`` and ``data.shape``),
which is saved in every checkpoint, so ``VAEModule.load_from_checkpoint(path)`` rebuilds the
same model with no other file.

The training step never waits for the device: the terms are accumulated on the device
(``metrics.TermMeans``) and read at epoch end; per-step values are logged only every
``trainer.log_every_n_steps`` steps, and a non-finite loss is looked for at those moments
too. With ``compile`` on, the deterministic part of the step (encoder, decoder and
likelihood, given the noise eps) goes through ``torch.compile``; the eager path computes
exactly the same function.

Validation and test report the true ELBO (``nelbo = recon + kl``, beta = 1, one sample)
whatever the training objective, and the latent diagnostics (KL per dimension, active units,
mutual information). The test also estimates log p(x) with ``eval.iw_samples`` importance
samples (``test/nll_iw``) and, for discrete likelihoods, bits per dimension (``test/bpd``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import CatMetric

from vaelab.errors import ConfigError, VaelabError, instantiate
from vaelab.metrics import TermMeans, active_units, bits_per_dim, kl_per_dimension, mutual_information
from vaelab.objectives import ELBO, Terms, log_importance_weights
from vaelab.posteriors import DiagonalGaussian

log = logging.getLogger("vaelab")
TRAIN_TERMS = ("loss", "recon", "kl")
EVAL_TERMS = ("nelbo", "recon", "kl", "nll_iw")


class NonFiniteLossError(VaelabError):
    """A training loss term became NaN or infinite."""


class VAEModule(L.LightningModule):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.config = config
        shape = config["data"]["shape"]
        self.image_dims = int(math.prod(shape))
        self.latent_dim = int(config["model"]["latent_dim"])
        self.likelihood = instantiate(config["likelihood"])
        self.encoder = instantiate(config["model"]["encoder"])
        self.decoder = instantiate(config["model"]["decoder"], out_channels=self.likelihood.param_channels(shape[0]))
        schedule = instantiate(config.get("kl_schedule") or {"_target_": "vaelab.schedules.Constant"})
        self.objective = instantiate(config["objective"], kl_schedule=schedule)
        self.true_elbo = ELBO(beta=1.0)
        eval_cfg = config.get("eval") or {}
        self.iw_samples = int(eval_cfg.get("iw_samples", 0))
        self.iw_chunk = int(eval_cfg.get("iw_chunk", 100))
        self.channels_last = bool(config["model"].get("channels_last", False))
        self.compile_mode = config.get("compile", "auto")
        if self.compile_mode not in (True, False, "auto"):
            raise ConfigError(f"compile must be auto, true or false, got {self.compile_mode!r}")
        self._log_px = self._eager_log_px
        # ("train" cannot be a ModuleDict key: it is a method of nn.Module)
        self.epoch_means = nn.ModuleDict(
            {"fit": TermMeans(TRAIN_TERMS), "val": TermMeans(EVAL_TERMS), "test": TermMeans(EVAL_TERMS)}
        )
        self.epoch_means["fit"].persistent(True)  # a mid-epoch checkpoint carries the epoch's sums so far
        self._rng_to_restore: dict | None = None
        self.posteriors = nn.ModuleDict({s: CatMetric(nan_strategy="disable") for s in ("val", "test")})
        self.kl_per_dim: dict[str, torch.Tensor] = {}  # latest per stage, for pictures and metrics.json
        self.register_buffer("first_nonfinite", torch.tensor([-1, -1]), persistent=False)  # (step, term)
        self.register_buffer("device_step", torch.tensor(0), persistent=False)  # global_step, on the device

    def configure_model(self) -> None:
        """Called by Lightning before each fit/test: memory format and compilation for the run's device."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        # (also called by load_from_checkpoint, with no trainer attached)
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        if self.compile_mode is True or (self.compile_mode == "auto" and device.type == "cuda"):
            self._log_px = torch.compile(self._eager_log_px, mode=self.config.get("compile_mode"))

    # --- the model -------------------------------------------------------------------
    @staticmethod
    def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
        """The densities are computed in float32 (or float64) even when the nets run in bf16."""
        return t.to(torch.promote_types(t.dtype, torch.float32))

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_encoder_output(self._at_least_float32(self.encoder(x)))

    def decoder_params(self, z: torch.Tensor) -> torch.Tensor:
        return self._at_least_float32(self.decoder(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] as an image in [0, 1]."""
        return self.likelihood.mean(self.decoder_params(z))

    def _log_px_given(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z_s) [S, B] for latents z [S, B, D]."""
        s, b = z.shape[:2]
        x_rep = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        return -self.likelihood.nll(self.decoder_params(z.reshape(s * b, -1)), x_rep).view(s, b)

    def _eager_log_px(self, x: torch.Tensor, eps: torch.Tensor):
        """(mu, logvar, log p(x|z_s) [S, B]) for z_s = mu + sigma * eps_s, eps [S, B, D]."""
        q = self.posterior(x)
        return q.mu, q.logvar, self._log_px_given(q.sample_from_noise(eps), x)

    def sample_terms(self, x: torch.Tensor, samples: int):
        """Draw ``samples`` z per image: (q, z [S, B, D], log p(x|z) [S, B])."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        eps = torch.randn(samples, len(x), self.latent_dim, device=x.device, dtype=self.dtype)
        mu, logvar, log_px = self._log_px(x, eps)
        q = DiagonalGaussian(mu, logvar)
        return q, q.sample_from_noise(eps), log_px

    def terms(self, x: torch.Tensor, step: int = 0) -> Terms:
        """The training objective's terms for a batch."""
        return self.objective(*self.sample_terms(x, self.objective.samples), step)

    @torch.no_grad()
    def iwae_log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 100) -> torch.Tensor:
        """log p(x) ~ logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] per image [B],
        with the k samples drawn ``chunk`` at a time and combined with a running logsumexp."""
        q = self.posterior(x)
        total = torch.full((len(x),), -math.inf, device=x.device, dtype=self.dtype)
        for start in range(0, k, chunk):
            s = min(chunk, k - start)
            z = q.sample_from_noise(torch.randn(s, len(x), self.latent_dim, device=x.device, dtype=self.dtype))
            log_w = log_importance_weights(q, z, self._log_px_given(z, x))
            total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
        return total - math.log(k)

    # --- training ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the random state, so that a run resumed from the middle of an epoch draws the same
        noise as the uninterrupted one."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        """Resuming: the random state is put back here, just before the first training step.

        (The objective learns the run's length here rather than in on_fit_start, where asking for
        it would set up the training batches before the checkpoint's data position is loaded.)"""
        self.objective.kl_schedule.setup(int(self.trainer.estimated_stepping_batches))
        if hasattr(self.objective, "dataset_size") and self.objective.dataset_size is None:
            self.objective.dataset_size = len(self.trainer.datamodule.train_set)
        self.device_step.fill_(self.global_step)
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_to_restore["cuda"], self.device)
            self._rng_to_restore = None

    def on_train_epoch_start(self) -> None:
        """(Lightning skips this hook when resuming in the middle of an epoch, which keeps that epoch's sums.)"""
        self.epoch_means["fit"].reset()

    def training_step(self, batch, batch_idx):
        x, _ = batch
        t = self.terms(x, self.global_step)
        values = {"loss": t.loss, "recon": t.recon, "kl": t.kl}
        self.epoch_means["fit"].update(values, len(x))
        self._watch_finite(t)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._check_finite()
            self.log_dict({f"train/{k}_step": v for k, v in values.items()}, on_step=True, on_epoch=False)
        return t.loss

    def _watch_finite(self, t: Terms) -> None:
        """Remember, on the device, the first step whose recon or KL is not finite."""
        bad = ~torch.isfinite(torch.stack([t.recon.detach(), t.kl.detach()]))
        first = torch.stack([self.device_step, bad.int().argmax()])
        fresh = bad.any() & (self.first_nonfinite[0] < 0)
        self.first_nonfinite.copy_(torch.where(fresh, first, self.first_nonfinite))
        self.device_step += 1

    def _check_finite(self) -> None:
        step, term = self.first_nonfinite.tolist()
        if step >= 0:
            saved = [c.last_model_path for c in self.trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")]
            last = saved[0] if saved else "none saved yet"
            raise NonFiniteLossError(
                f"train/{('recon', 'kl')[term]} became NaN or infinite at step {step}; training stopped "
                f"(last good checkpoint: {last}). Try a lower optimizer.lr, trainer.gradient_clip_val=1.0, "
                "or trainer.precision=32-true"
            )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.trainer.num_training_batches:  # before validation and checkpoints
            self._check_finite()

    def on_train_epoch_end(self) -> None:
        self._log_means("fit", "train")

    # --- validation and test -----------------------------------------------------------
    def _evaluate(self, batch, stage: str) -> None:
        x, _ = batch
        q, z, log_px = self.sample_terms(x, 1)
        t = self.true_elbo(q, z, log_px)
        values = {"nelbo": t.nelbo, "recon": t.recon, "kl": t.kl}
        if stage == "test" and self.iw_samples > 0:
            values["nll_iw"] = -self.iwae_log_likelihood(x, self.iw_samples, self.iw_chunk).mean()
        self.epoch_means[stage].update(values, len(x))
        self.posteriors[stage].update(torch.cat([q.mu, q.logvar], dim=1))

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _log_means(self, stage: str, prefix: str) -> dict[str, torch.Tensor]:
        means = self.epoch_means[stage].compute_and_reset(prefix)
        self.log_dict(means, on_step=False, on_epoch=True)
        return means

    def _log_diagnostics(self, stage: str) -> None:
        means = self._log_means(stage, stage)
        posteriors = self.posteriors[stage].compute().float()  # gathered from every process
        self.posteriors[stage].reset()
        mu, logvar = posteriors.chunk(2, dim=1)
        generator = torch.Generator().manual_seed(0)
        kl = kl_per_dimension(mu, logvar)
        self.kl_per_dim[stage] = kl.cpu()
        diagnostics = {
            f"{stage}/active_units": float(active_units(mu)),
            f"{stage}/mi": mutual_information(mu, logvar, generator),
        }
        if self.likelihood.discrete:
            nll = means.get(f"{stage}/nll_iw", means[f"{stage}/nelbo"])
            diagnostics[f"{stage}/bpd"] = float(bits_per_dim(nll, self.image_dims))
        self.log_dict(diagnostics, on_step=False, on_epoch=True)
        if (diagnostics[f"{stage}/active_units"] == 0 or float(kl.sum()) < 0.1) and not self.trainer.sanity_checking:
            log.warning(
                "%s: the posterior has collapsed (%d active units, KL %.3f nats): the latents carry almost no "
                "information; try kl_schedule=free_bits or kl_schedule=cyclical, or a lower objective.beta",
                stage, diagnostics[f"{stage}/active_units"], float(kl.sum()),
            )

    def on_validation_epoch_end(self) -> None:
        self._log_diagnostics("val")

    def on_test_epoch_end(self) -> None:
        self._log_diagnostics("test")

    def configure_optimizers(self):
        optimizer = instantiate(self.config["optimizer"])(params=self.parameters())
        scheduler_cfg = self.config.get("scheduler")
        if not scheduler_cfg:
            return optimizer
        scheduler = instantiate(scheduler_cfg["scheduler"])(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {**scheduler_cfg.get("lightning", {}), "scheduler": scheduler}}
