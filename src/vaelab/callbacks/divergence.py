"""Stop a diverging run, as the NaN stop does, before it writes a checkpoint or validates.

A learning rate far too high rarely gives NaN at once: the loss climbs to 1e8 or 1e30 nats and
stays finite, the run ends with exit status 0, and every picture and metric after it is noise.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import lightning as L
import torch

from vaelab.callbacks.callback import Callback
from vaelab.checkpoint_io import last_good_checkpoint
from vaelab.errors import TrainingStopped


class DivergenceGuard(Callback):
    """Watches the negative ELBO ``recon + kl`` (nats per image, whatever the objective's
    weights) and stops training when a reading exceeds

        limit = m + factor * (|m| + D),

    m the median of the last ``window`` readings and D the number of values per image (one nat
    per pixel of slack keeps the limit meaningful when m is near 0 or negative, as with learned
    Gaussian likelihoods). The first reading is the model before its first step (or as
    restored), so a run that diverges within its first steps is caught too.

    Readings: the logged step values (``train/recon_step + train/kl_step``) every
    ``trainer.log_every_n_steps`` steps, and the model's negative ELBO on a fixed set of
    ``eval_batch_size`` validation images (test images without a validation split) before each
    validation, at each epoch end and before every checkpoint is written, so no checkpoint holds
    a diverged model and no picture or diagnostic is drawn from one. That forward pass runs in
    eval mode with the random state saved and restored, so it changes nothing in the run. A NaN
    or infinite reading stops the run too. Under DDP the decision is taken by all processes together.
    """

    def __init__(self, factor: float = 10.0, window: int = 20):
        if not factor > 0 or window < 1:
            raise ValueError("DivergenceGuard needs factor > 0 and window >= 1")
        self.factor = factor
        self.readings: deque[float] = deque(maxlen=window)
        self._examples: tuple[torch.Tensor, torch.Tensor] | None = None
        self._checked_step = -1

    # --- readings ----------------------------------------------------------------------
    @torch.no_grad()
    def examples_nelbo(self, trainer: L.Trainer, pl_module) -> float:
        """The mean negative ELBO of the fixed examples under the current model."""
        if self._examples is None:
            datamodule = trainer.datamodule
            x, y = datamodule.examples(datamodule.eval_batch_size, "val")
            self._examples = (x.to(pl_module.device), y.to(pl_module.device))
        x, y = self._examples
        was_training = pl_module.training
        pl_module.eval()
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            value = float(pl_module.vae.elbo_terms(x, y).nelbo.float().mean())
        pl_module.train(was_training)
        return value

    def _check(self, trainer: L.Trainer, value: float, what: str) -> None:
        limit = self.limit
        diverged = not math.isfinite(value) or (limit is not None and value > limit)
        if trainer.strategy.reduce_boolean_decision(diverged, all=False):
            self._stop(trainer, value, what, limit)
        self.readings.append(value)

    @property
    def limit(self) -> float | None:
        if not self.readings:
            return None
        m = statistics.median(self.readings)
        return m + self.factor * (abs(m) + self.values_per_image)

    def _stop(self, trainer: L.Trainer, value: float, what: str, limit: float | None) -> None:
        if math.isfinite(value) and limit is not None:
            m = statistics.median(self.readings)
            found = (f"{what} reached {value:.4g} nats per image at step {trainer.global_step}, far above its running "
                     f"median {m:.4g} (limit {limit:.4g} = median + {self.factor:g} x (|median| + "
                     f"{self.values_per_image} values per image))")
        else:
            found = f"{what} became {value} at step {trainer.global_step}"
        lr = ", ".join(f"{group['lr']:.3g}" for opt in trainer.optimizers for group in opt.param_groups)
        raise TrainingStopped(
            f"training diverged: {found}; training stopped. Last good checkpoint: {last_good_checkpoint(trainer)}. "
            f"Try a lower optimizer.lr (now {lr}) or trainer.gradient_clip_val=1.0; callbacks.divergence.factor "
            "sets the limit"
        )

    def _check_model(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_step != self._checked_step:
            self._checked_step = trainer.global_step
            value = self.examples_nelbo(trainer, pl_module)
            self._check(trainer, value, "the negative ELBO of fixed validation images")

    # --- hooks -------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        x, _ = trainer.datamodule.examples(1, "val")
        self.values_per_image = x[0].numel()
        self.readings.append(self.examples_nelbo(trainer, pl_module))
        self._checked_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % trainer.log_every_n_steps or step == self._checked_step:
            return
        metrics = trainer.callback_metrics
        if "train/recon_step" in metrics and "train/kl_step" in metrics:
            self._check(trainer, float(metrics["train/recon_step"]) + float(metrics["train/kl_step"]),
                        "the training negative ELBO")

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check_model(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._check_model(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        if trainer.state.fn == "fit" and self.readings:
            self._check_model(trainer, pl_module)
