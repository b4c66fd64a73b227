"""metrics.json in the run folder, and the TensorBoard hparams tab, from the run's final metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from vaelab import hparams
from vaelab.callbacks import find_callback, tensorboard_writer
from vaelab.callbacks.callback import Callback
from vaelab.callbacks.diagnostics import LatentDiagnostics
from vaelab.files import write_json_atomic
from vaelab.metric_info import RunFacts, about, describe
from vaelab.tensorboard import add_hparams

# the order of the HPARAMS tab's metrics (TensorBoard ticks the first five): the negative ELBO,
# then the test-only estimates, then the test split's terms, then the validation split's
METRIC_ORDER = ("nelbo", "nll_iw", "bpd", "error", "recon", "kl", "kl_z1", "kl_z2", "active_units", "mi")


def epoch_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's scalar metrics by their logged names, without Lightning's ``_step``/``_epoch`` copies."""
    return {
        name: float(value) for name, value in trainer.callback_metrics.items()
        if value.numel() == 1 and not name.endswith(("_step", "_epoch"))
    }


def metric_order(name: str) -> tuple:
    stage, _, term = name.partition("/")
    rank = METRIC_ORDER.index(term) if term in METRIC_ORDER else len(METRIC_ORDER)
    return (0 if term == "nelbo" else 1 if stage == "test" else 2), rank, name


class FinalMetrics(Callback):
    """Writes ``metrics.json`` after training and again after testing (rank 0 only, atomically):
    every final epoch metric by its logged name (``val/nelbo``, ``test/nelbo``, ...), the KL of
    each latent dimension where the model defines it (``val/kl_per_dim``, ``test/kl_per_dim``),
    ``about`` (what each metric is: ``vaelab.metric_info``), plus ``seed``, ``epochs``,
    ``global_step``, ``wall_time_s``, ``config_path`` and the checkpoint tested. The same
    descriptions go to TensorBoard as the text ``about/metrics``.

    It also fills TensorBoard's HPARAMS tab, after testing (``test``: the run is tested after
    training) or else after training (``vaelab.hparams``): one row per run, named by what tells it
    apart; as columns, the run's overrides and the settings ``columns`` (config paths; a config
    group's name gives its chosen option) with their types, those the sweep varies (a single run:
    its overrides) ticked first; as metrics, the run's ``val/...`` and ``test/...`` scalars
    themselves with their descriptions, the negative ELBO first.
    """

    def __init__(self, path: str, seed: int | None, config_path: str | None = None, test: bool = True,
                 columns: Sequence[str] = ()):
        self.path = Path(path)
        self.seed = seed
        self.config_path = config_path
        self.test = test
        self.columns = list(columns)
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
            # (a pipe inside a cell, as in KL(q(z|x) || p(z)), would end the cell: escaped)
            cells = {name: text.replace("|", r"\|") for name, text in self.metrics["about"].items()}
            rows = "\n".join(f"| `{name}` | {text} |" for name, text in cells.items())
            writer.add_text("about/metrics", f"| metric | what it is |\n| --- | --- |\n{rows}", trainer.global_step)

    def _write_hparams(self, trainer: L.Trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        run_dir, facts = self.path.parent, RunFacts.of(pl_module)
        names = sorted((k for k, v in self.metrics.items() if k.startswith(("val/", "test/")) and not isinstance(v, list)),
                       key=metric_order)
        add_hparams(writer, hparams.columns(pl_module.hparams.config or {}, self.columns, run_dir),
                    [key for key, _ in hparams.varied(run_dir)], {name: describe(name, facts) for name in names},
                    hparams.trial_name(run_dir))

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer, pl_module)
        if trainer.is_global_zero:
            self._write(trainer)
            if not self.test:
                self._write_hparams(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._collect(trainer, pl_module)
        self.metrics["test_ckpt_path"] = trainer.ckpt_path
        if trainer.is_global_zero:
            self._write(trainer)
            self._write_hparams(trainer, pl_module)
