"""``last.ckpt`` by wall-clock time, so that a run killed at any moment loses at most a few minutes."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from vaelab.callbacks.callback import Callback


class TimedCheckpoint(Callback):
    """Writes ``path`` (the run's ``last.ckpt``) whenever ``minutes`` of training have passed
    since the last checkpoint of any kind (epoch ends, every N steps, this one), at the end of a
    training step. The checkpoint is the same as the step checkpoints' (weights, optimizer, data
    position, running sums, random state), so a run resumed from it ends as the uninterrupted one.

    (Lightning's ``ModelCheckpoint(train_time_interval=...)`` is not used: it ignores the
    interval under manual optimization, i.e. with ``cuda_graph=true``, and under DDP it
    broadcasts the clock from rank 0 after every step; here a multi-process run agrees on the
    clock only every ``trainer.log_every_n_steps`` steps.)
    """

    def __init__(self, path: str, minutes: float = 5.0):
        if not minutes > 0:
            raise ValueError(f"TimedCheckpoint needs minutes > 0, got {minutes}")
        self.path = Path(path)
        self.seconds = 60.0 * minutes
        self._last = time.monotonic()

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._last = time.monotonic()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        self._last = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size > 1 and trainer.global_step % trainer.log_every_n_steps:
            return
        due = time.monotonic() - self._last >= self.seconds
        if trainer.world_size > 1:
            due = trainer.strategy.broadcast(due)
        if due:
            trainer.save_checkpoint(self.path, weights_only=False)
