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
