"""``VAEModule``, the LightningModule: trains a ``VAE`` with an objective and evaluates it.

It receives the model (``vaelab.vae.VAE``, which owns the maths), the training objective, the
optimizer as a partial and an optional learning-rate scheduler, and the evaluation settings;
``from_config`` builds all of them from a run's resolved config, which every checkpoint carries,
so a checkpoint alone rebuilds its module (``vaelab.checkpoints.load_module``).

The training step never waits for the device: the terms are summed on the device (the
``fit_sums`` buffer, handed to ``metrics.TermMeans`` at epoch end; a NaN or infinity stays in a
sum, so the steps whose sums are still finite are counted to find the first that was not);
per-step values are logged only every ``trainer.log_every_n_steps`` steps, and a non-finite loss
is looked for at those moments too. The optimizer steps by Lightning's manual optimization,
or its automatic one where the run clips or accumulates gradients or schedules the learning rate
(``configure_model``), without Lightning's layers around backward() and step() where they would
do nothing for the run (``vaelab.direct_step``). With ``compile`` on, the deterministic part of
a pass goes through ``torch.compile`` (``VAE.use_compiled_step``); with ``cuda_graph`` on, the
step is recorded and replayed as a CUDA graph (``vaelab.graph_step``).

Validation and test report the true ELBO (``nelbo = recon + kl``, beta = 1, one sample; of
log p(x|y) for a conditional model, of log p(x) with the label marginalized for M2) whatever the
training objective. The test also estimates log p(x) with ``iw_samples`` importance samples
(``test/nll_iw``), and where the likelihood is a probability mass over the data's values, bits
per dimension (``bpd``). Each evaluation step returns the batch's Gaussian posterior, from which
the ``LatentDiagnostics`` callback computes the latent diagnostics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from vaelab import direct_step
from vaelab.checkpoint_io import last_good_checkpoint
from vaelab.errors import ConfigError, VaelabError, instantiate
from vaelab.graph_step import GraphedStep, graph_safe_training_step
from vaelab.likelihoods import reports_bits_per_dim
from vaelab.metrics import TermMeans, bits_per_dim
from vaelab.nets import checked_shape
from vaelab.objectives import M2, Objective, Terms
from vaelab.vae import VAE

log = logging.getLogger("vaelab")
TRAIN_TERMS = ("loss", "recon", "kl")
EVAL_TERMS = ("nelbo", "recon", "kl", "nll_iw")


class NonFiniteLossError(VaelabError):
    """A training loss term became NaN or infinite."""


class VAEModule(L.LightningModule):
    def __init__(self, vae: VAE, objective: Objective, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable | None = None, scheduler_settings: dict | None = None,
                 iw_samples: int = 0, iw_chunk: int = 100, bits_per_dim: bool = False,
                 compile: bool | str = "auto", compile_mode: str | None = None, cuda_graph: bool = False,
                 config: dict[str, Any] | None = None):
        super().__init__()
        # the run's resolved config, saved in every checkpoint (from_config rebuilds the module from it)
        self.save_hyperparameters({"config": config}, logger=False)
        self.vae = vae
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory, self.scheduler_settings = scheduler, dict(scheduler_settings or {})
        self.iw_samples, self.iw_chunk = int(iw_samples), int(iw_chunk)
        self.bits_per_dim = bool(bits_per_dim)
        if compile not in (True, False, "auto"):
            raise ConfigError(f"compile must be auto, true or false, got {compile!r}")
        self.compile_setting, self.compile_mode = compile, compile_mode
        self.cuda_graph = bool(cuda_graph)
        self.predict_task = "encode"  # what predict_step computes (vaelab.predict sets it)
        self._check_combination()
        # a second network the objective trains by its own optimizer (FactorVAE's discriminator):
        # registered here, so that it moves to the device and is checkpointed with the model
        self.discriminator = objective.discriminator
        self.automatic_optimization = not (self.cuda_graph or self.discriminator is not None)
        self.graph_step: GraphedStep | None = None
        self.steps_directly = False  # without Lightning's layers around backward() and step() (configure_model)
        layers = tuple(f"kl_{name}" for name in (("z1", "z2") if vae.ladder is not None else ()))
        self.train_terms = (*TRAIN_TERMS, *layers, *objective.extra_terms)
        eval_terms = (*EVAL_TERMS, *layers, *(("error",) if vae.semi_supervised else ()))
        # ("train" cannot be a ModuleDict key: it is a method of nn.Module)
        self.epoch_means = nn.ModuleDict(
            {"fit": TermMeans(self.train_terms), "val": TermMeans(eval_terms), "test": TermMeans(eval_terms)}
        )
        # the epoch's batch-size-weighted sums of the training terms and the image count, on the
        # device; persistent, so that a mid-epoch checkpoint carries the epoch's sums so far
        self.register_buffer("fit_sums", torch.zeros(len(self.train_terms) + 1, dtype=torch.float64))
        self.register_buffer("one", torch.ones(()), persistent=False)  # the image count's weight in fit_sums
        # the steps since `counted_from` after which fit_sums was still finite (all of them, until a
        # term is NaN or infinite: the first such step is counted_from + finite_steps)
        self.register_buffer("finite_steps", torch.tensor(0), persistent=False)
        self.counted_from = 0
        self._rng_to_restore: dict | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VAEModule:
        """The module of a run's resolved config (``model``, ``objective``, ``kl_schedule``,
        ``optimizer``, ``scheduler``, ``eval``, ``compile``, ``compile_mode``, ``cuda_graph``, and
        ``data.binarize`` / ``data.labels_per_class``)."""
        checked_shape(config["model"]["shape"], config["model"]["latent_dim"])  # (before the parts that read it)
        vae = instantiate(config["model"])
        schedule = instantiate(config.get("kl_schedule") or {"_target_": "vaelab.schedules.Constant"})
        objective = instantiate(config["objective"], kl_schedule=schedule)
        data = config.get("data") or {}
        if data.get("labels_per_class") and not isinstance(objective, M2):
            raise ConfigError("data.labels_per_class hides most labels, which only objective=m2 can learn without: "
                              "use experiment=mnist_m2_100 or data.labels_per_class=null")
        scheduler = config.get("scheduler") or {}
        evaluation = config.get("eval") or {}
        return cls(
            vae, objective, instantiate(config["optimizer"]),
            scheduler=instantiate(scheduler["scheduler"]) if scheduler else None,
            scheduler_settings=scheduler.get("lightning"),
            iw_samples=evaluation.get("iw_samples", 0), iw_chunk=evaluation.get("iw_chunk", 100),
            bits_per_dim=reports_bits_per_dim(vae.likelihood, data.get("binarize", "none")),
            compile=config.get("compile", "auto"), compile_mode=config.get("compile_mode"),
            cuda_graph=bool(config.get("cuda_graph", False)), config=config,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name before and after each hook it calls, some 40 times a
        # training step: a plain attribute, it needs none of nn.Module's checks for parameters,
        # buffers and submodules (2-3 us each on the reference CPU)
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def semi_supervised(self) -> bool:
        return isinstance(self.objective, M2)

    def _check_combination(self) -> None:
        """Refuse objectives that the model cannot serve, with the way out."""
        if self.objective.needs_gaussian_posterior and not self.vae.closed_form_kl:
            raise ConfigError(f"objective={self.objective.name} needs posterior=gaussian, prior=normal and a "
                              "one-layer model")
        if self.semi_supervised != self.vae.semi_supervised:
            raise ConfigError("objective=m2 needs model.conditional=true and a model.classifier "
                              "(use experiment=mnist_m2_100), and a model.classifier needs objective=m2")

    def check_trainer(self, trainer: L.Trainer) -> None:
        """Refuse, before training, the trainer settings the training step cannot follow: with a
        discriminator (manual optimization) gradient clipping, accumulation and a scheduler; with
        cuda_graph=true (one recorded step, replayed) also what changes between steps outside the
        graph's tensors."""
        if self.discriminator is not None:
            manual = [(self.cuda_graph, "cuda_graph=true: use cuda_graph=false"),
                      *((asked, f"{what}: {fix}") for asked, what, fix in self._automatic_only(trainer))]
            for refused, what in manual:
                if refused:
                    raise ConfigError(f"objective={self.objective.name} trains its discriminator by manual "
                                      f"optimization, which does not support {what}")
        if not self.cuda_graph:
            return
        refusals = [
            (self.objective.kl_schedule.uses_step, "a KL schedule that changes with the step"),
            *((asked, what) for asked, what, _ in self._automatic_only(trainer)),
            (trainer.world_size > 1 or trainer.num_nodes > 1,
             "DDP (trainer.strategy, trainer.devices other than 1, trainer.num_nodes)"),
        ]
        for refused, what in refusals:
            if refused:
                raise ConfigError(f"cuda_graph=true does not support {what}: use cuda_graph=false "
                                  "(the compiled step) for this run")

    def _automatic_only(self, trainer: L.Trainer) -> list[tuple[bool, str, str]]:
        """What only Lightning's automatic optimization does for a run: (asked for, the setting, how
        to leave it out)."""
        return [(self.scheduler_factory is not None, "a learning-rate scheduler", "use scheduler=null"),
                (trainer.gradient_clip_val not in (None, 0), "trainer.gradient_clip_val", "leave it unset"),
                (trainer.accumulate_grad_batches != 1, "trainer.accumulate_grad_batches", "leave it at 1")]

    def configure_model(self) -> None:
        """Called by Lightning before each fit/test: how the optimizer steps, compilation and step
        recording for the run's device.

        The optimizer steps by Lightning's manual optimization (``_manual_step``: zero_grad, backward,
        step, the order of the automatic loop, so the same arithmetic) unless the run clips or
        accumulates gradients or schedules the learning rate, which Lightning's automatic optimization
        does for it: the manual step passes through fewer of Lightning's layers and hooks (no closure,
        no zero-grad hooks), 4% of an MLP step on the reference CPU; and where Lightning's layers
        around backward() and step() would do nothing else for the run, without them
        (``vaelab.direct_step``, another 4-5%)."""
        trainer = self._trainer
        if trainer is not None and self.discriminator is None and not self.cuda_graph:
            self.automatic_optimization = any(asked for asked, _, _ in self._automatic_only(trainer))
        self.steps_directly = (trainer is not None and not self.automatic_optimization
                               and direct_step.steps_directly(trainer, self))
        device = trainer.strategy.root_device if trainer is not None else self.device
        compiled = self.compile_setting is True or (self.compile_setting == "auto" and device.type == "cuda")
        if compiled and self.vae._forward == self.vae._eager_forward:
            self.vae.use_compiled_step(self.compile_mode)
        if self.cuda_graph and self.graph_step is None:
            self.graph_step = GraphedStep(graph_safe_training_step(self), state=lambda: list(self.buffers()))

    def terms(self, x: torch.Tensor, y: torch.Tensor | None = None, step: int = 0) -> Terms:
        """The training objective's terms for a batch (y: labels, -1 where unknown)."""
        if self.semi_supervised:
            return self.objective(*self.vae.per_class_terms(x), self.vae.classifier_logits(x), y)
        return self.objective(*self.vae.sample_terms(x, self.objective.samples, y), step)

    # --- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the random state, so that a run resumed from the middle of an epoch draws the same
        noise as the uninterrupted one."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from vaelab.checkpoints import carry_optimizer_steps, upgrade

        upgrade(checkpoint)
        self._rng_to_restore = checkpoint.get("rng_states")
        carry_optimizer_steps(checkpoint, manual=not self.automatic_optimization)

    # --- training ----------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Resuming: the random state is put back here, just before the first training step.

        (The objective learns the run's length here rather than in on_fit_start, where asking for
        it would set up the training batches before the checkpoint's data position is loaded.)"""
        self.objective.kl_schedule.setup(int(self.trainer.estimated_stepping_batches))
        datamodule = self.trainer.datamodule
        self.objective.setup(len(datamodule.train_set), datamodule.num_labelled)
        self._count_finite_steps_from_here()
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._rng_to_restore["cuda"], self.device)
            self._rng_to_restore = None

    def on_train_epoch_start(self) -> None:
        """(Lightning skips this hook when resuming in the middle of an epoch, which keeps that epoch's sums.)"""
        self.fit_sums.zero_()
        self._count_finite_steps_from_here()

    def _count_finite_steps_from_here(self) -> None:
        self.finite_steps.zero_()
        self.counted_from = self.global_step

    def training_step(self, batch, batch_idx):
        x, y = batch
        step = self.global_step
        if self.graph_step is not None:  # the graph fills the gradients, Lightning's optimizer steps
            values, t = self.graph_step(x, y), None
            self.optimizers().step()
        else:
            t = self.terms(x, y, step)
            values = self.record_step(t, len(x))
        if (step + 1) % self.trainer.log_every_n_steps == 0:
            self._check_finite()
            self.log_dict({f"train/{name}_step": v.clone() for name, v in zip(self.train_terms, values)},
                          on_step=True, on_epoch=False)
        if t is None:  # (the recorded step has stepped)
            return None
        if self.automatic_optimization:
            return t.loss
        self._manual_step(t)
        return None

    def _manual_step(self, t: Terms) -> None:
        """The VAE's optimizer step on the batch's loss; then, for an objective with a discriminator
        (FactorVAE, Kim & Mnih 2018, Algorithm 2), the discriminator's on telling the batch's latents
        from their dimension-wise permutation (the same batch, as disentanglement_lib). The
        discriminator's step goes to its torch optimizer directly, so that ``global_step`` counts the
        VAE's steps only."""
        optimizers = self.optimizers()
        vae_optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        backward = torch.Tensor.backward if self.steps_directly else self.manual_backward
        vae_optimizer.zero_grad()
        backward(t.loss)
        if self.steps_directly:
            direct_step.step(vae_optimizer)
        else:
            vae_optimizer.step()
        if self.discriminator is not None:
            discriminator_optimizer = optimizers[1]
            discriminator_loss = self.discriminator.loss(t.latents)
            discriminator_optimizer.zero_grad()
            backward(discriminator_loss)
            discriminator_optimizer.optimizer.step()

    def record_step(self, t: Terms, batch_size: int) -> torch.Tensor:
        """Add the batch's terms times its size, and the size, to the epoch's sums, and count the
        step if the sums are all still finite; on the device, in five kernels. Returns the batch
        means in ``train_terms`` order (then a 1, the count's weight)."""
        extra = [t.extra[name] for name in self.train_terms[len(TRAIN_TERMS):]]
        values = torch.stack([t.loss, t.recon, t.kl, *extra, self.one]).detach()
        self.fit_sums.add_(values, alpha=batch_size)
        self.finite_steps.add_(self.fit_sums.isfinite().all())
        return values

    def _check_finite(self) -> None:
        """Stop with the first step whose sums are not finite, naming a non-finite term (recon, kl, ...
        before loss, which is their weighted sum); one read from the device."""
        finite_steps, *finite = torch.cat([self.finite_steps.view(1), self.fit_sums[:-1].isfinite()]).tolist()
        bad = [name for name, ok in zip(self.train_terms, finite) if not ok]
        if bad:
            term = next((name for name in bad if name != "loss"), bad[0])
            raise NonFiniteLossError(
                f"train/{term} became NaN or infinite at step {self.counted_from + finite_steps}; training "
                f"stopped (last good checkpoint: {last_good_checkpoint(self.trainer)}). Try a lower optimizer.lr, "
                "trainer.gradient_clip_val=1.0, or trainer.precision=32-true"
            )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.trainer.num_training_batches:  # before validation and checkpoints
            self._check_finite()

    def on_train_epoch_end(self) -> None:
        sums, count = self.fit_sums[:-1], self.fit_sums[-1]
        if count > 0:
            self.epoch_means["fit"].update(dict(zip(self.train_terms, (sums / count).float())), count)
        means = self._log_means("fit", "train")
        if "train/recon" in means:  # the negative ELBO (beta = 1) of the training samples, to compare with val/nelbo
            self.log("train/nelbo", means["train/recon"] + means["train/kl"], on_step=False, on_epoch=True)

    # --- validation and test -----------------------------------------------------------
    def _evaluate(self, batch, stage: str):
        """Add the batch's true-ELBO terms (and, in testing, its IWAE NLL) to the stage's means;
        returns its Gaussian posteriors for the latent diagnostics."""
        x, y = batch
        terms = self.vae.elbo_terms(x, y)
        values = {"nelbo": terms.nelbo.mean(), "recon": terms.recon.mean(), "kl": terms.kl.mean(),
                  **{f"kl_{name}": kl.mean() for name, kl in terms.layer_kl.items()}}
        if self.vae.semi_supervised:
            values["error"] = (self.vae.classifier_logits(x).argmax(-1) != y).float().mean()
        if stage == "test" and self.iw_samples > 0:
            values["nll_iw"] = -self.vae.log_likelihood(x, self.iw_samples, y, self.iw_chunk).mean()
        self.epoch_means[stage].update(values, len(x))
        return terms.posterior if terms.posterior is not None else self.vae.encode(x, y)

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test")

    def _log_means(self, stage: str, prefix: str) -> dict[str, torch.Tensor]:
        means = self.epoch_means[stage].compute_and_reset(prefix)
        self.log_dict(means, on_step=False, on_epoch=True)
        return means

    def _log_evaluation(self, stage: str) -> None:
        means = self._log_means(stage, stage)
        if self.bits_per_dim and f"{stage}/nelbo" in means:
            nll = means.get(f"{stage}/nll_iw", means[f"{stage}/nelbo"])
            self.log(f"{stage}/bpd", bits_per_dim(nll, self.vae.image_dims), on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    # --- vaelab.predict -----------------------------------------------------------------
    def predict_step(self, batch, batch_idx) -> dict[str, torch.Tensor]:
        """``predict_task`` on a batch (inputs, labels; the labels reach conditional models only), on
        the CPU: ``encode`` the posterior's ``mean`` and ``logvar`` [B, D] (``VAE.encode``),
        ``reconstruct`` E[x | z = E[z|x]], ``score`` the negative ELBO (one z) and the IWAE NLL
        (``iw_samples``) per image in nats; ``sample`` decodes the inputs, which are then latents z."""
        x, y = batch
        y = y if self.vae.conditional else None
        if self.predict_task == "encode":
            q = self.vae.encode(x, y)
            out = {"mean": q.mean, "logvar": q.logvar}
        elif self.predict_task == "reconstruct":
            out = {"reconstruction": self.vae.reconstruct(x, y)}
        elif self.predict_task == "score":
            out = {"nelbo": self.vae.elbo_terms(x, y).nelbo,
                   "nll_iw": -self.vae.log_likelihood(x, self.iw_samples, y, self.iw_chunk)}
        else:
            out = {"image": self.vae.decode(x, y)}
        return {name: value.float().cpu() for name, value in out.items()}

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.vae.parameters())
        if self.discriminator is not None:
            return [optimizer, self.objective.discriminator_optimizer(self.discriminator.parameters())]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {**self.scheduler_settings, "scheduler": scheduler}}
