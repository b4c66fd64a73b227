"""The KL of each latent dimension in TensorBoard, after every validation."""

from __future__ import annotations

import logging

import lightning as L
import torch

from vaelab.callbacks import tensorboard_writer

log = logging.getLogger("vaelab")


class LatentDiagnostics(L.Callback):
    """Logs ``latent/kl_per_dim`` as a histogram (how many dimensions carry how many nats) and
    ``latent/kl_per_dim_bars`` as a bar chart (nats per dimension), from the validation set's
    posteriors (computed by the module, with ``val/active_units`` and ``val/mi``)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        kl = pl_module.kl_per_dim.get("val")
        if writer is None or kl is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        finite = kl[torch.isfinite(kl)]
        try:  # (TensorBoard refuses empty inputs, and equal values too large to bin, e.g. 1e33)
            writer.add_histogram("latent/kl_per_dim", finite, global_step=trainer.current_epoch)
        except ValueError as err:
            log.warning("latent/kl_per_dim histogram skipped at epoch %d: %s", trainer.current_epoch, err)
        writer.add_figure("latent/kl_per_dim_bars", bar_chart(kl), global_step=trainer.current_epoch)


def bar_chart(kl):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, len(kl) * 0.25), 3))
    ax.bar(range(len(kl)), kl.numpy())
    ax.axhline(0.01, color="grey", linewidth=0.5)
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats)")
    fig.tight_layout()
    return fig
