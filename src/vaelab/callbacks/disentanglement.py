"""The disentanglement metrics after testing, when the data set has known generative factors."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L

from vaelab.callbacks import tensorboard_writer


class DisentanglementMetrics(L.Callback):
    """After the test, on data with known factors (``datamodule.factor_data``: ``data=dsprites``,
    ``color_dsprites``), computes ``evaluate(vae, datamodule, seed=...)`` (the ``disentanglement/``
    config: MIG, DCI, SAP, FactorVAE and beta-VAE scores; ``vaelab.disentanglement.evaluate``) on
    rank 0, logs them as ``disent/...`` test metrics (so they reach metrics.json) and draws the
    labelled traversals in TensorBoard as ``disentanglement/latent_traversals``. ``when``: ``test``
    or ``never``. Other data sets are left alone."""

    def __init__(self, evaluate: Callable, when: str = "test", seed: int = 0):
        if when not in ("test", "never"):
            raise ValueError(f"callbacks.disentanglement.when must be test or never, got {when!r}")
        self.evaluate, self.when, self.seed = evaluate, when, seed

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if self.when == "never" or getattr(datamodule, "factor_data", None) is None or not trainer.is_global_zero:
            return
        scores, pictures = self.evaluate(pl_module.vae, datamodule, seed=self.seed)
        pl_module.log_dict(scores, on_step=False, on_epoch=True, rank_zero_only=True)
        writer = tensorboard_writer(trainer)
        for name, figure in pictures.items():
            if writer is not None:
                writer.add_figure(f"disentanglement/{name}", figure, global_step=trainer.global_step)
