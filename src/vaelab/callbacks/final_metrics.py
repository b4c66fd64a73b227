"""metrics.json in the run folder, and the TensorBoard hparams tab, from the run's final metrics."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from vaelab.callbacks import find_callback, tensorboard_writer
from vaelab.callbacks.diagnostics import LatentDiagnostics
from vaelab.files import write_json_atomic
from vaelab.metric_info import RunFacts, about


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists become strings (TensorBoard's hparams take scalars only)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def epoch_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's scalar metrics by their logged names, without Lightning's ``_step``/``_epoch`` copies."""
    return {
        name: float(value) for name, value in trainer.callback_metrics.items()
        if value.numel() == 1 and not name.endswith(("_step", "_epoch"))
    }


class FinalMetrics(L.Callback):
    """Writes ``metrics.json`` after training and again after testing (rank 0 only, atomically):
    every final epoch metric by its logged name (``val/nelbo``, ``test/nelbo``, ...), the KL of
    each latent dimension where the model defines it (``val/kl_per_dim``, ``test/kl_per_dim``),
    ``about`` (what each metric is: ``vaelab.metric_info``), plus ``seed``, ``epochs``,
    ``global_step``, ``wall_time_s``, ``config_path`` and the checkpoint tested. The same
    descriptions go to TensorBoard as the text ``about/metrics``. After testing it also fills
    TensorBoard's hparams tab with the flattened config and the test and val metrics (as
    ``hp/<name>``)."""

    def __init__(self, path: str, seed: int | None, config_path: str | None = None):
        self.path = Path(path)
        self.seed = seed
        self.config_path = config_path
        self.start = time.time()
        self.metrics: dict = {}

    def _collect(self, trainer: L.Trainer, pl_module) -> None:
        self.metrics.update(epoch_metrics(trainer))
        diagnostics = find_callback(trainer, LatentDiagnostics)
        if diagnostics is not None:
            self.metrics.update({f"{stage}/kl_per_dim": kl.tolist() for stage, kl in diagnostics.kl_per_dim.items()})
        self.metrics.update(
            seed=self.seed, epochs=trainer.current_epoch, global_step=trainer.global_step,
            wall_time_s=time.time() - self.start, config_path=self.config_path,
        )
        self.metrics["about"] = about([k for k in self.metrics if "/" in k], RunFacts.of(pl_module))

    def _write(self, trainer: L.Trainer) -> None:
        write_json_atomic(self.path, self.metrics)
        writer = tensorboard_writer(trainer)
        if writer is not None:
            rows = "\n".join(f"| `{name}` | {text} |" for name, text in self.metrics["about"].items())
            writer.add_text("about/metrics", f"| metric | what it is |\n| --- | --- |\n{rows}", trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer, pl_module)
        if trainer.is_global_zero:
            self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer, pl_module)
        self.metrics["test_ckpt_path"] = trainer.ckpt_path
        if not trainer.is_global_zero:
            return
        self._write(trainer)
        hp_metrics = {f"hp/{k}": v for k, v in self.metrics.items()
                      if k.startswith(("val/", "test/")) and not isinstance(v, list)}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(flatten(pl_module.hparams.config), metrics=hp_metrics)
