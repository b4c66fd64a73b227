"""The LightningModule: encoder, latents, decoder, likelihood and objective of one VAE.

It is built from the run's resolved config (``model``, ``posterior``, ``prior``,
``likelihood``, ``objective``, ``kl_schedule``, ``optimizer``, ``scheduler``, ``compile``,
``cuda_graph``, ``eval``, ``data`` and ``trainer``), which is saved in every checkpoint, so
``VAEModule.load_from_checkpoint(path)`` rebuilds the same model with no other file.

The model families are parts of this one module: the posterior family (Gaussian or a flow on
it), the prior (normal, mixture, VampPrior), a two-layer ladder (``model.ladder``), label
conditioning (``model.conditional``) and the M2 classifier (``model.classifier`` with
``objective=m2``). Each pass through the latents yields a ``LatentSample``, which is all the
objectives and the IWAE evaluation read.

The training step never waits for the device: the terms are summed on the device (the
``fit_sums`` buffer, handed to ``metrics.TermMeans`` at epoch end); per-step values are logged
only every ``trainer.log_every_n_steps`` steps, and a non-finite loss is looked for at those
moments too. With ``compile`` on, the deterministic part of the step (encoder, decoder and
likelihood, given the noise eps) goes through ``torch.compile``; the eager path computes
exactly the same function. With ``cuda_graph`` on, the step's forward pass, gradients and sums
are one graph-safe function (``_graph_safe_step``) replayed as a CUDA graph on a GPU
(``graph_step.GraphedStep``), and the optimizer steps by Lightning's manual optimization.

Validation and test report the true ELBO (``nelbo = recon + kl``, beta = 1, one sample; of
log p(x|y) for a conditional model, of log p(x) with the label marginalized for M2) whatever the
training objective, and the latent diagnostics (KL per dimension, active units,
mutual information). The test also estimates log p(x) with ``eval.iw_samples`` importance
samples (``test/nll_iw``) and, for discrete likelihoods, bits per dimension (``test/bpd``).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import CatMetric

from vaelab.checkpoint_io import last_good_checkpoint
from vaelab.errors import ConfigError, VaelabError, instantiate
from vaelab.graph_step import GraphedStep
from vaelab.latents import LatentSample
from vaelab.metrics import (
    TermMeans,
    active_units,
    bits_per_dim,
    kl_per_dimension,
    mutual_information,
)
from vaelab.nets import checked_shape
from vaelab.objectives import ELBO, M2, Terms, log_importance_weights
from vaelab.posteriors import DiagonalGaussian
from vaelab.priors import VampPrior

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
        model_cfg = config["model"]
        self.image_dims = int(math.prod(shape))
        self.latent_dim = int(model_cfg["latent_dim"])
        checked_shape(shape, self.latent_dim)  # (before the parts that read latent_dim from model.latent_dim)
        self.num_classes = int(config["data"].get("num_classes", 10))
        self.conditional = bool(model_cfg.get("conditional", False))
        cond_dim = self.num_classes if self.conditional else 0
        self.likelihood = instantiate(config["likelihood"])
        self.flow = instantiate(config.get("posterior") or {"_target_": "vaelab.posteriors.GaussianPosterior"})
        self.prior = instantiate(config.get("prior") or {"_target_": "vaelab.priors.StandardNormal",
                                                         "latent_dim": self.latent_dim})
        self.ladder = instantiate(model_cfg["ladder"]) if model_cfg.get("ladder") else None
        self.classifier = instantiate(model_cfg["classifier"]) if model_cfg.get("classifier") else None
        self.encoder = instantiate(model_cfg["encoder"], extra_outputs=self.flow.context_dim, cond_dim=cond_dim)
        self.decoder = instantiate(model_cfg["decoder"], out_channels=self.likelihood.param_channels(shape[0]),
                                   cond_dim=cond_dim)
        schedule = instantiate(config.get("kl_schedule") or {"_target_": "vaelab.schedules.Constant"})
        self.objective = instantiate(config["objective"], kl_schedule=schedule)
        self._check_combination()
        self.true_elbo = ELBO(beta=1.0)
        eval_cfg = config.get("eval") or {}
        self.iw_samples = int(eval_cfg.get("iw_samples", 0))
        self.iw_chunk = int(eval_cfg.get("iw_chunk", 100))
        self.channels_last = bool(model_cfg.get("channels_last", False))
        self.compile_mode = config.get("compile", "auto")
        if self.compile_mode not in (True, False, "auto"):
            raise ConfigError(f"compile must be auto, true or false, got {self.compile_mode!r}")
        self._forward = self._eager_forward
        self.cuda_graph = bool(config.get("cuda_graph", False))
        self._check_cuda_graph()
        self.automatic_optimization = not self.cuda_graph
        self.graph_step: GraphedStep | None = None
        layers = tuple(f"kl_{name}" for name in (("z1", "z2") if self.ladder is not None else ()))
        self.train_terms = (*TRAIN_TERMS, *layers, *(("classifier_ce",) if self.semi_supervised else ()))
        eval_terms = (*EVAL_TERMS, *layers, *(("error",) if self.classifier is not None else ()))
        # ("train" cannot be a ModuleDict key: it is a method of nn.Module)
        self.epoch_means = nn.ModuleDict(
            {"fit": TermMeans(self.train_terms), "val": TermMeans(eval_terms), "test": TermMeans(eval_terms)}
        )
        # the epoch's batch-size-weighted sums of the training terms and the image count, on the
        # device; persistent, so that a mid-epoch checkpoint carries the epoch's sums so far
        self.register_buffer("fit_sums", torch.zeros(len(self.train_terms) + 1, dtype=torch.float64))
        self._rng_to_restore: dict | None = None
        self.posteriors = nn.ModuleDict({s: CatMetric(nan_strategy="disable") for s in ("val", "test")})
        self.kl_per_dim: dict[str, torch.Tensor] = {}  # latest per stage, for pictures and metrics.json
        self.register_buffer("first_nonfinite", torch.tensor([-1, -1]), persistent=False)  # (step, term)
        self.register_buffer("device_step", torch.tensor(0), persistent=False)  # global_step, on the device

    @property
    def semi_supervised(self) -> bool:
        return isinstance(self.objective, M2)

    def _check_combination(self) -> None:
        """Refuse the model families that do not combine, with the way out."""
        if self.objective.needs_gaussian_posterior and not (self.flow.closed_form and self.prior.standard_normal
                                                             and self.ladder is None):
            raise ConfigError("objective=beta_tc needs posterior=gaussian, prior=normal and a one-layer model")
        if self.ladder is not None and not (self.flow.closed_form and self.prior.standard_normal):
            raise ConfigError("model=hierarchical has its own prior and posterior: use posterior=gaussian prior=normal")
        if self.ladder is not None and self.ladder.latent_dim != self.latent_dim:
            raise ConfigError("model.ladder.latent_dim must equal model.latent_dim (the decoder's input)")
        if self.conditional and isinstance(self.prior, VampPrior):
            raise ConfigError("prior=vamp encodes unlabelled pseudo-inputs: use it with model.conditional=false")
        if self.config["data"].get("labels_per_class") and not self.semi_supervised:
            raise ConfigError("data.labels_per_class hides most labels, which only objective=m2 can learn without: "
                              "use experiment=mnist_m2_100 or data.labels_per_class=null")
        if self.semi_supervised != (self.classifier is not None) or (self.semi_supervised and not self.conditional):
            raise ConfigError("objective=m2 needs model.conditional=true and a model.classifier "
                              "(use experiment=mnist_m2_100), and a model.classifier needs objective=m2")

    def _check_cuda_graph(self) -> None:
        """cuda_graph=true records one step and replays it: what changes between steps outside the
        graph's tensors, or needs Lightning's automatic optimization, cannot take part."""
        if not self.cuda_graph:
            return
        trainer = self.config.get("trainer") or {}
        refusals = [
            (self.objective.kl_schedule.uses_step, "a KL schedule that changes with the step"),
            (bool(self.config.get("scheduler")), "a learning-rate scheduler"),
            (trainer.get("gradient_clip_val") not in (None, 0), "trainer.gradient_clip_val"),
            (trainer.get("accumulate_grad_batches", 1) != 1, "trainer.accumulate_grad_batches"),
            (trainer.get("strategy") is not None or trainer.get("devices", 1) not in (1, "1")
             or trainer.get("num_nodes", 1) != 1, "DDP (trainer.strategy, trainer.devices other than 1, trainer.num_nodes)"),
        ]
        for refused, what in refusals:
            if refused:
                raise ConfigError(f"cuda_graph=true does not support {what}: use cuda_graph=false "
                                  "(the compiled step) for this run")

    def configure_model(self) -> None:
        """Called by Lightning before each fit/test: memory format and compilation for the run's device."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        # (also called by load_from_checkpoint, with no trainer attached)
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        if self.compile_mode is True or (self.compile_mode == "auto" and device.type == "cuda"):
            self._forward = torch.compile(self._eager_forward, mode=self.config.get("compile_mode"))
        if self.cuda_graph:
            self.graph_step = GraphedStep(self._graph_safe_step, state=lambda: list(self.buffers()))

    # --- the model -------------------------------------------------------------------
    @staticmethod
    def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
        """The densities are computed in float32 (or float64) even when the nets run in bf16."""
        return t.to(torch.promote_types(t.dtype, torch.float32))

    @property
    def noise_dim(self) -> int:
        """Standard-normal noise per sample: D, or D1 + D2 for the two-layer model."""
        return self.ladder.noise_dim if self.ladder is not None else self.latent_dim

    def one_hot(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The label as the conditional nets' input [B, K] (None for unconditional models)."""
        if not self.conditional:
            return None
        if y is None:
            raise ConfigError("this is a conditional model (model.conditional=true): give the class labels")
        return F.one_hot(y.long(), self.num_classes).to(self.dtype)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output h [B, 2D + context] in float32."""
        return self._at_least_float32(self.encoder(x, self.one_hot(y)))

    def gaussian_posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagonalGaussian:
        """The encoder's Gaussian q0(z|x) (what the VampPrior averages over its pseudo-inputs)."""
        return DiagonalGaussian.from_encoder_output(self.encode(x, y)[:, : 2 * self.latent_dim])

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagonalGaussian:
        """A Gaussian over the decoder's latents for pictures and embeddings: q0(z|x), or for the
        two-layer model q(z1|x, z2 = E[z2|x])."""
        if self.ladder is not None:
            return self.ladder.mean_posterior(self.encode(x, y))
        return self.gaussian_posterior(x, y)

    def latent_sample(self, h: torch.Tensor, eps: torch.Tensor) -> LatentSample:
        """Samples z and their densities from the encoder output h and noise eps [S, B, noise_dim]."""
        if self.ladder is not None:
            return self.ladder(h, eps)
        d = self.latent_dim
        base = DiagonalGaussian.from_encoder_output(h[:, : 2 * d])
        z, log_q = self.flow(base, h[:, 2 * d :], eps)
        log_p = self.prior.log_prob(z, self.gaussian_posterior)
        closed = self.flow.closed_form and self.prior.standard_normal
        return LatentSample(z, log_q, log_p, base, base.kl_standard_normal_per_dim() if closed else None)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z) [n, D] (for the two-layer model z1 ~ p(z1|z2), z2 ~ N(0, I))."""
        if self.ladder is not None:
            return self.ladder.sample_prior(n, generator)
        return self.prior.sample(n, self.gaussian_posterior, generator).to(self.device)

    def decoder_params(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self._at_least_float32(self.decoder(z, self.one_hot(y)))

    def decode_mean(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E[x|z] (E[x|z, y] for conditional models) as an image in [0, 1]."""
        return self.likelihood.mean(self.decoder_params(z, y))

    def decode_class_rows(self, z: torch.Tensor) -> torch.Tensor:
        """A conditional model's E[x|z, y] for each of the n latents z [n, D] with every class y:
        [K * n] images, one row of n per class (the same z down each column)."""
        y = torch.arange(self.num_classes, device=z.device).repeat_interleave(len(z))
        return self.decode_mean(z.repeat(self.num_classes, 1), y)

    def _log_px_given(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z_s) [S, B] for latents z [S, B, D]."""
        s, b = z.shape[:2]
        x_rep = x.unsqueeze(0).expand(s, *x.shape).reshape(s * b, *x.shape[1:])
        y_rep = None if y is None else y.repeat(s)
        return -self.likelihood.nll(self.decoder_params(z.reshape(s * b, -1), y_rep), x_rep).view(s, b)

    def _eager_forward(self, x: torch.Tensor, y: torch.Tensor | None, eps: torch.Tensor):
        """Encoder, latents and decoder for noise eps [S, B, noise_dim]: the LatentSample's tensors
        and log p(x|z_s) [S, B] (a flat tuple, which torch.compile returns as is)."""
        sample = self.latent_sample(self.encode(x, y), eps)
        log_px = self._log_px_given(sample.z, x, y)
        return (sample.z, sample.log_q, sample.log_p, sample.base.mu, sample.base.logvar, sample.kl_per_dim,
                sample.layer_kl, log_px)

    def sample_terms(self, x: torch.Tensor, samples: int, y: torch.Tensor | None = None):
        """Draw ``samples`` z per image: (LatentSample, log p(x|z) [S, B])."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        eps = torch.randn(samples, len(x), self.noise_dim, device=x.device, dtype=self.dtype)
        z, log_q, log_p, mu, logvar, kl_per_dim, layer_kl, log_px = self._forward(x, y, eps)
        return LatentSample(z, log_q, log_p, DiagonalGaussian(mu, logvar), kl_per_dim, layer_kl), log_px

    def per_class_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """recon(x, y) and KL(q(z|x, y) || p(z)) for every class y: [B, K] each (one sample)."""
        k, b = self.num_classes, len(x)
        classes = torch.arange(k, device=x.device).repeat_interleave(b)
        sample, log_px = self.sample_terms(x.repeat(k, *([1] * (x.dim() - 1))), 1, classes)
        return -log_px[0].view(k, b).T, sample.kl.view(k, b).T

    def terms(self, x: torch.Tensor, y: torch.Tensor | None = None, step: int = 0) -> Terms:
        """The training objective's terms for a batch (y: labels, -1 where unknown)."""
        if self.semi_supervised:
            return self.objective(*self.per_class_terms(x), self.classifier(x).float(), y)
        return self.objective(*self.sample_terms(x, self.objective.samples, y), step)

    @torch.no_grad()
    def iwae_log_likelihood(self, x: torch.Tensor, k: int, chunk: int = 100,
                            y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) ~ logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] per image [B]
        (log p(x|y) for conditional models), with the k samples drawn ``chunk`` at a time and
        combined with a running logsumexp. The encoder runs once."""
        h = self.encode(x, y)
        total = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float32)
        for start in range(0, k, chunk):
            s = min(chunk, k - start)
            sample = self.latent_sample(h, torch.randn(s, len(x), self.noise_dim, device=x.device, dtype=h.dtype))
            log_w = log_importance_weights(sample, self._log_px_given(sample.z, x, y))
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
        self._carry_optimizer_steps(checkpoint)

    def _carry_optimizer_steps(self, checkpoint: dict) -> None:
        """Lightning counts optimizer steps (global_step) in its automatic-optimization loop, or in
        its manual one with cuda_graph=true: a checkpoint written with the other setting has its
        count in the other loop, which is copied here so that the resumed run goes on counting."""
        loop = checkpoint.get("loops", {}).get("fit_loop")
        if not loop or "epoch_loop.manual_optimization.optim_step_progress" not in loop:
            return
        automatic = loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]
        manual = loop["epoch_loop.manual_optimization.optim_step_progress"]
        source, target = (automatic, manual) if self.cuda_graph else (manual, automatic)
        if target["total"]["completed"] == 0:
            target.update(copy.deepcopy(source))

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
        self.fit_sums.zero_()

    def training_step(self, batch, batch_idx):
        x, y = batch
        step = self.global_step
        if self.graph_step is None:
            t = self.terms(x, y, step)
            values, loss = self._record_step(t, len(x)), t.loss
        else:  # manual optimization: the graph fills the gradients, Lightning's optimizer steps
            values, loss = self.graph_step(x, y), None
            self.optimizers().step()
        if (step + 1) % self.trainer.log_every_n_steps == 0:
            self._check_finite()
            self.log_dict({f"train/{name}_step": v.clone() for name, v in zip(self.train_terms, values)},
                          on_step=True, on_epoch=False)
        return loss

    def _record_step(self, t: Terms, batch_size: int) -> torch.Tensor:
        """Add the batch's terms to the epoch's sums and watch for non-finite ones (on the device);
        returns the batch means in ``train_terms`` order."""
        values = torch.stack([t.loss, t.recon, t.kl, *(t.extra[name] for name in self.train_terms[len(TRAIN_TERMS):])]).detach()
        self.fit_sums[:-1] += values * batch_size
        self.fit_sums[-1] += batch_size
        self._watch_finite(t)
        return values

    def _graph_safe_step(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """One training step's forward pass, gradients (written into each parameter's .grad in
        place) and sums, with nothing that waits for the device or changes between steps outside
        the module's tensors: what ``GraphedStep`` records (the KL schedule is step-independent)."""
        t = self.terms(x, y, 0)
        params = [p for p in self.parameters() if p.requires_grad]
        grads = torch.autograd.grad(t.loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if g is not None:
                p.grad.copy_(g)
        return self._record_step(t, len(x))

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
            raise NonFiniteLossError(
                f"train/{('recon', 'kl')[term]} became NaN or infinite at step {step}; training stopped "
                f"(last good checkpoint: {last_good_checkpoint(self.trainer)}). Try a lower optimizer.lr, "
                "trainer.gradient_clip_val=1.0, or trainer.precision=32-true"
            )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.trainer.num_training_batches:  # before validation and checkpoints
            self._check_finite()

    def on_train_epoch_end(self) -> None:
        sums, count = self.fit_sums[:-1], self.fit_sums[-1]
        if count > 0:
            self.epoch_means["fit"].update(dict(zip(self.train_terms, (sums / count).float())), count)
        self._log_means("fit", "train")

    # --- validation and test -----------------------------------------------------------
    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        if self.semi_supervised:  # the bound on log p(x), the label marginalized with q(y|x)
            logits = self.classifier(x).float()
            t = self.objective(*self.per_class_terms(x), logits, torch.full_like(y, -1))
            values = {"error": (logits.argmax(-1) != y).float().mean()}
            q = self.gaussian_posterior(x, y)
        else:  # the bound on log p(x) (log p(x|y) for a conditional model), with per-layer KLs
            sample, log_px = self.sample_terms(x, 1, y)
            t, q = self.true_elbo(sample, log_px), sample.base
            values = dict(t.extra)
        values.update(nelbo=t.nelbo, recon=t.recon, kl=t.kl)
        if stage == "test" and self.iw_samples > 0:
            values["nll_iw"] = -self.log_likelihood(x, y, self.iw_samples, self.iw_chunk).mean()
        self.epoch_means[stage].update(values, len(x))
        self.posteriors[stage].update(torch.cat([q.mu, q.logvar], dim=1))

    @torch.no_grad()
    def nelbo_per_image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The negative ELBO of each image [B] (one sample): of log p(x|y) for a conditional model,
        of log p(x) with the label marginalized by q(y|x) for M2, of log p(x) otherwise."""
        if self.semi_supervised:
            recon, kl, _, _ = M2.per_image(*self.per_class_terms(x), self.classifier(x).float(), torch.full_like(y, -1))
            return recon + kl
        sample, log_px = self.sample_terms(x, 1, y)
        return -log_px[0] + sample.kl

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, k: int, chunk: int = 100) -> torch.Tensor:
        """The IWAE estimate of log p(x) [B] with k samples: log p(x|y) for a conditional model,
        and for M2 log sum_y p(y) p(x|y), each class's term estimated with k samples."""
        if not self.semi_supervised:
            return self.iwae_log_likelihood(x, k, chunk, y if self.conditional else None)
        per_class = torch.stack([self.iwae_log_likelihood(x, k, chunk, torch.full_like(y, c))
                                 for c in range(self.num_classes)])
        return torch.logsumexp(per_class, 0) - math.log(self.num_classes)

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
