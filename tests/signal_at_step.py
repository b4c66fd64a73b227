"""A test-only callback that sends its own process a signal once training has reached a given
optimizer step, as ``kill -TERM``, Ctrl-C or SLURM would (``python -m vaelab.train
+callbacks.signal._target_=signal_at_step.SignalAtStep +callbacks.signal.step=9``)."""

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step = step
        self.signum = int(signum)
        self.sent = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class SignalInValidation(L.Callback):
    """Sends the signal in the middle of the first validation after training started."""

    def __init__(self, signum: int = signal.SIGTERM):
        self.signum = int(signum)
        self.sent = False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
