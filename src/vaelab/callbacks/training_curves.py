"""The curves a VAE user looks at first, as one TensorBoard CUSTOM SCALARS layout, and the
schedule values it charts (learning rate, beta and the KL schedule's weight or capacity)."""

from __future__ import annotations

import lightning as L

from vaelab.callbacks import tensorboard_writer
from vaelab.callbacks.callback import Callback
from vaelab.tensorboard import add_layout


class TrainingCurves(Callback):
    """At the first training batch, writes the CUSTOM SCALARS layout:

    - "negative ELBO (nats/image): train vs val": ``train/nelbo`` and ``val/nelbo``;
    - "reconstruction and KL (nats/image)": ``train|val/recon``, ``train|val/kl`` (and the ladder's
      ``kl_z1``, ``kl_z2``);
    - "beta and the KL weight w(t)" (``schedule/beta``, ``schedule/kl_weight``; loss = recon +
      beta w(t) KL) or "KL and its target capacity C(t) (nats/image)" (``schedule/kl_capacity``,
      ``train/kl_step``; loss = recon + beta gamma |KL - C(t)|), with a KL schedule that changes
      over training;
    - "learning rate": ``schedule/lr``.

    Then, at that first batch and every ``trainer.log_every_n_steps`` steps (where the module logs
    its ``train/*_step`` values), it hands every logger ``schedule/lr`` (the first optimizer's
    first parameter group) and the objective's ``curves`` (``beta`` with ``kl_weight`` or
    ``kl_capacity``) at the step about to be taken. These are host numbers: logging them waits for
    nothing on the device.
    """

    def __init__(self):
        self.first_batch = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step  # the index of the step about to be taken: Lightning's step for its logs
        if not self.first_batch and (step + 1) % trainer.log_every_n_steps:
            return
        curves = {f"schedule/{name}": value for name, value in pl_module.objective.curves(step).items()}
        if self.first_batch:
            self.first_batch = False
            writer = tensorboard_writer(trainer)
            if writer is not None and trainer.is_global_zero:
                add_layout(writer, self.charts(curves))
        values = {"schedule/lr": trainer.optimizers[0].param_groups[0]["lr"], **curves}
        for logger in trainer.loggers:
            logger.log_metrics(values, step)

    @staticmethod
    def charts(curves: dict[str, float]) -> dict[str, list[str]]:
        """{chart title: the regular expressions of its scalar tags}."""
        charts = {
            "negative ELBO (nats/image): train vs val": [r"^(train|val)/nelbo$"],
            "reconstruction and KL (nats/image)": [r"^(train|val)/(recon|kl|kl_z1|kl_z2)$"],
        }
        if "schedule/kl_weight" in curves:
            charts["beta and the KL weight w(t)"] = [r"^schedule/(beta|kl_weight)$"]
        if "schedule/kl_capacity" in curves:
            charts["KL and its target capacity C(t) (nats/image)"] = [
                r"^schedule/kl_capacity$", r"^train/kl_step$"]
        charts["learning rate"] = [r"^schedule/lr$"]
        return charts
