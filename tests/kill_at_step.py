"""A test-only callback that kills its own process (SIGKILL: no clean-up, as an out-of-memory
killer or a pre-empted job would) once training has reached a given optimizer step."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
