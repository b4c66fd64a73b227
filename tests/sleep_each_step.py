"""A test-only callback that makes every training step last at least ``seconds`` (a run that
stays alive long enough for another process to meet it)."""

import time

import lightning as L


class SleepEachStep(L.Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
