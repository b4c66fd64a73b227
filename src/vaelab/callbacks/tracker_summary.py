"""The run's hparams and final metrics for every experiment tracker other than TensorBoard (MLflow,
Weights & Biases, CSV), whose hparams tab ``FinalMetrics`` fills."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from vaelab.callbacks.callback import Callback
from vaelab.callbacks.final_metrics import epoch_metrics


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists become strings (the trackers' hparams take scalars only)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class TrackerSummary(Callback):
    """At the start of training, logs the run's resolved config, flattened (``model/latent_dim``,
    ``objective/beta``, ...), as each tracker's hyperparameters; at the end of the run (after
    testing when ``tested``, else after training) logs the final metrics as ``final/<name>``
    (``final/test/nelbo``, ``final/val/nelbo``, ..., with ``final/epochs`` and
    ``final/global_step``), the values of ``metrics.json``; then ends a Weights & Biases run (wandb
    keeps one run per process, into which the next job of a sweep would otherwise log). Rank 0 only."""

    def __init__(self, tested: bool = True):
        self.tested = tested
        self.metrics: dict[str, float] = {}

    @staticmethod
    def trackers(trainer: L.Trainer) -> list:
        return [logger for logger in trainer.loggers if not isinstance(logger, TensorBoardLogger)]

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero and pl_module.hparams.get("config"):
            for logger in self.trackers(trainer):
                logger.log_hyperparams(flatten(pl_module.hparams.config))

    def _collect(self, trainer: L.Trainer, final: bool) -> None:
        self.metrics.update(epoch_metrics(trainer))
        self.metrics.update(epochs=trainer.current_epoch, global_step=trainer.global_step)
        if not final or not trainer.is_global_zero:
            return
        for logger in self.trackers(trainer):
            logger.log_metrics({f"final/{name}": value for name, value in self.metrics.items()}, step=trainer.global_step)
            logger.save()
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer, final=not self.tested)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer, final=True)
