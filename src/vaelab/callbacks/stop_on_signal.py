"""Ctrl-C (SIGINT) and SIGTERM (a SLURM preemption, ``kill``, a shutdown) stop training at the
end of the current step with a resumable checkpoint, a line saying how to resume, and exit
status 128 + the signal number (130, 143), as a shell reports a process a signal ended.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vaelab.callbacks.callback import Callback
from vaelab.errors import VaelabError

log = logging.getLogger("vaelab")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal(Callback):
    """Builds on Lightning's SIGTERM handling: its handler only raises a flag (and passes the
    signal on to DDP child processes), and its loops stop at the end of the current training
    step (all processes at the same step), where this callback writes ``path`` (the run's
    ``last.ckpt``: weights, optimizer, data position, running sums, random state, so the resumed
    run ends with the metrics of an uninterrupted one). Ctrl-C takes the same path instead of
    Python's KeyboardInterrupt, which can strike in the middle of an optimizer step; a second
    Ctrl-C stops at once, without a checkpoint.

    A signal during validation is held until the validation ends (seconds), so the checkpoint
    is the state after it rather than a half-validated epoch; during the test after training the
    run stops at once (training has finished; its checkpoints are complete).
    """

    def __init__(self, path: str):
        self.path = path
        self.signum: int | None = None
        self._forward = None  # Lightning's SIGTERM handler, which raises its flag
        self._validating = False
        self._held = False  # a signal waits for the end of validation

    # --- the handlers ------------------------------------------------------------------
    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._forward = signal.getsignal(signal.SIGTERM)
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)  # (Lightning puts the previous handlers back at its teardown)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a checkpoint
                raise KeyboardInterrupt
            return
        self.signum = signum
        log.warning("received %s: stopping at the end of this step with a checkpoint (Ctrl-C again stops at once)",
                    signal.Signals(signum).name)
        if self._validating:
            self._held = True
        else:
            self._raise_flag(frame)

    def _raise_flag(self, frame=None) -> None:
        if callable(self._forward):
            self._forward(signal.SIGTERM, frame)

    # --- hooks -------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._install()

    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        self._install()

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self._validating = trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        self._validating = False
        if self._held:
            self._held = False
            self._raise_flag()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.signum or signal.SIGTERM
        exception.code = 128 + signum
        name = signal.Signals(signum).name
        if trainer.state.fn != "fit":
            if trainer.is_global_zero:
                print(f"vaelab: stopped by {name} during the {trainer.state.fn}; training had finished, its "
                      "checkpoints are complete: run the test with python -m vaelab.eval "
                      "ckpt_path=<run>/checkpoints/best.ckpt",
                      file=sys.stderr)
            return
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        except VaelabError as err:
            if trainer.is_global_zero:
                print(f"vaelab: stopped by {name} {where}; no checkpoint written: {err}", file=sys.stderr)
            return
        if trainer.is_global_zero:
            print(f"vaelab: stopped by {name} {where}; saved {self.path}; resume with: {resume_command(self.path)}"
                  + (" (a requeued SLURM job resumes from it by itself)" if _auto_requeue(trainer) else ""),
                  file=sys.stderr)


def resume_command(ckpt_path: str) -> str:
    """The command line of this run with ``ckpt_path`` set to the given checkpoint."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if not o.lstrip("+~").startswith("ckpt_path=")]
    return shlex.join(["python", "-m", "vaelab.train", *kept, f"ckpt_path={ckpt_path}"])


def _auto_requeue(trainer: L.Trainer) -> bool:
    environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue
