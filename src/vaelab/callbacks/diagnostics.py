"""Latent diagnostics after every validation and test: active units, mutual information, the KL of
each latent dimension, and the collapse warning."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torchmetrics import CatMetric

from vaelab.callbacks import epoch_end_step, tensorboard_writer
from vaelab.callbacks.callback import Callback
from vaelab.metric_info import RunFacts, describe
from vaelab.metrics import active_units, kl_per_dimension, mutual_information
from vaelab.tensorboard import add_figure

log = logging.getLogger("vaelab")


class LatentDiagnostics(Callback):
    """From the Gaussian posteriors of all the stage's images (each evaluation step of the
    ``VAEModule`` returns its batch's; under DDP they are gathered from every process):

    - ``<stage>/active_units``: dimensions d with Cov_x(E_q[z_d]) > 0.01 (Burda et al. 2016);
    - ``<stage>/mi``: I(x; z) under the aggregate posterior (``metrics.mutual_information``; in
      validation, E_q(z)[log q(z)] over the z of ``mi_samples`` images, the same images each time,
      against the mixture of all the posteriors: N / mi_samples times cheaper, with the same
      expectation and a larger variance; in testing, over every image);
    - the KL of each latent dimension, KL(q(z_d|x) || N(0, 1)) averaged over images, only where it
      is the model's KL (``VAE.closed_form_kl``: Gaussian posterior, standard-normal prior, one
      latent layer): kept in ``kl_per_dim`` for metrics.json and drawn in TensorBoard as the bar
      chart ``latent/kl_per_dim`` (at the step of the validation scalars).

    The posterior is ``VAE.encode``'s Gaussian: for ``posterior=iaf|planar`` the base z0 before
    the flow, for ``model=hierarchical`` z1 given z2 = E[z2|x]; active units and MI measure that
    variable. After each validation and test it warns when the model's own KL (``<stage>/kl``; for
    the two-layer model each layer's) is below ``collapse_nats``: the latents carry almost no
    information.
    """

    def __init__(self, collapse_nats: float = 0.1, mi_samples: int | None = 2000):
        self.collapse_nats = collapse_nats
        self.mi_samples = mi_samples
        self.posteriors: dict[str, CatMetric] = {}
        self.kl_per_dim: dict[str, torch.Tensor] = {}  # latest per stage, for metrics.json

    def _collect(self, stage: str, pl_module, posterior) -> None:
        if stage not in self.posteriors:
            self.posteriors[stage] = CatMetric(nan_strategy="disable")
        metric = self.posteriors[stage].to(pl_module.device)
        metric.update(torch.cat([posterior.mu, posterior.logvar], dim=1).float())

    def _compute(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        metric = self.posteriors.get(stage)
        if metric is None or not metric.update_count:
            return
        posteriors = metric.compute().float()  # a collective under DDP: every process calls it
        metric.reset()
        if trainer.sanity_checking:
            return
        mu, logvar = posteriors.chunk(2, dim=1)
        pl_module.log_dict({f"{stage}/active_units": float(active_units(mu)),
                            f"{stage}/mi": mutual_information(mu, logvar, torch.Generator().manual_seed(0),
                                                              samples=self.mi_samples if stage == "val" else None)},
                           on_step=False, on_epoch=True)
        if pl_module.vae.closed_form_kl:
            self.kl_per_dim[stage] = kl_per_dimension(mu, logvar).cpu()

    def _warn_if_collapsed(self, trainer: L.Trainer, stage: str) -> None:
        metrics = trainer.callback_metrics
        layers = [name for name in metrics if name.startswith(f"{stage}/kl_z")] or [f"{stage}/kl"]
        for name in layers:
            if name in metrics and float(metrics[name]) < self.collapse_nats:
                log.warning(
                    "%s: the posterior has collapsed (%s = %.3f nats, %d active units): the latents carry almost no "
                    "information; try kl_schedule=free_bits or kl_schedule=cyclical, or a lower objective.beta",
                    stage, name, float(metrics[name]), int(metrics.get(f"{stage}/active_units", -1)),
                )

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("val", pl_module, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect("test", pl_module, outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._compute(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._compute(trainer, pl_module, "test")

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._warn_if_collapsed(trainer, "val")
        writer = tensorboard_writer(trainer)
        kl = self.kl_per_dim.get("val")
        if writer is not None and kl is not None and trainer.is_global_zero:
            add_figure(writer, "latent/kl_per_dim", bar_chart(kl), epoch_end_step(trainer),
                       f"val/kl_per_dim: {describe('val/kl_per_dim', RunFacts.of(pl_module))}. The dimensions are "
                       "numbered as in images/traversals (z_0, z_1, ...); they sum to val/kl.")

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._warn_if_collapsed(trainer, "test")


def bar_chart(kl):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    width, height = max(5, len(kl) * 0.3), 3.2
    fig, ax = plt.subplots(figsize=(width, height))
    # fixed margins (inches) rather than tight_layout, which took half the chart's time at every validation
    fig.subplots_adjust(left=0.95 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.55 / height)
    # (a diverged model's non-finite values are left out rather than crash the plot)
    ax.bar(range(len(kl)), torch.where(torch.isfinite(kl), kl, torch.nan).numpy())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.01, color="grey", linewidth=0.5, label="0.01 nats")
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel("KL(q(z_d|x) || N(0, 1))\n(nats/image)")
    ax.set_title(f"KL per latent dimension, validation\n(total {float(kl.sum()):.2f} nats/image)", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    return fig
