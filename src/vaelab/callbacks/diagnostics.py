"""The KL of each latent dimension in TensorBoard, after every validation."""

from __future__ import annotations

import lightning as L

from vaelab.callbacks import tensorboard_writer


class LatentDiagnostics(L.Callback):
    """Logs ``latent/kl_per_dim`` as a histogram (how many dimensions carry how many nats) and
    ``latent/kl_per_dim_bars`` as a bar chart (nats per dimension), from the validation set's
    posteriors (computed by the module, with ``val/active_units`` and ``val/mi``)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        kl = pl_module.kl_per_dim.get("val")
        if writer is None or kl is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        writer.add_histogram("latent/kl_per_dim", kl, global_step=trainer.current_epoch)
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
