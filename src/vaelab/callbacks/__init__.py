"""Callbacks: pictures and embeddings in TensorBoard, and the run's metrics.json."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the run's TensorBoard logger, or None when TensorBoard is not among the loggers."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def find_callback(trainer: L.Trainer, kind: type):
    """The trainer's callback of this class, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def epoch_end_step(trainer: L.Trainer) -> int:
    """The step at which Lightning logs an epoch's scalars (the training epoch's means, the
    validation metrics): the index of the epoch's last optimizer step, ``global_step - 1`` (its
    step axis counts steps from 0). Pictures and embeddings logged at this step line up with those
    scalars on TensorBoard's step slider."""
    return max(trainer.global_step - 1, 0)
