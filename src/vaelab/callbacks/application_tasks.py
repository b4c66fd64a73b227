"""The applications of the trained model measured after testing (``eval.after_training``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch

from vaelab.callbacks import epoch_end_step, tensorboard_writer
from vaelab.callbacks.callback import Callback
from vaelab.evaluation_tasks import (
    APPLICATIONS,
    CAPTIONS,
    checked_tasks,
    fitted_samplers,
    run_applications,
)
from vaelab.tensorboard import add_picture

log = logging.getLogger("vaelab")


class ApplicationTasks(Callback):
    """After the test, on rank 0, runs the ``tasks`` of ``vaelab.evaluation_tasks`` (samples,
    completion, representation, disentanglement) on the tested model, logs their metrics as test
    metrics (so they reach metrics.json and a sweep's summary) and draws their pictures in
    TensorBoard (``tasks/<name>``). ``disentanglement`` runs only on data with known factors
    (``data=dsprites``, ``color_dsprites``) and is skipped elsewhere; a ``trainer.fast_dev_run``
    (a check that a setup runs) skips them all, as it skips checkpoints and loggers. The task settings are the
    groups ``sample_quality/``, ``completion/``, ``representation/``, ``disentanglement/``,
    ``domain_classifier/`` and ``sampler/`` of the run's config."""

    def __init__(self, tasks, runs: dict[str, Callable], domain_classifier: Callable, sampler,
                 seed: int = 0):
        self.tasks = checked_tasks(tasks, "eval.after_training", APPLICATIONS)
        self.runs, self.domain_classifier, self.seed = runs, domain_classifier, seed
        self.sampler = sampler

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        tasks = set(self.tasks)
        if "disentanglement" in tasks and getattr(datamodule, "factor_data", None) is None:
            tasks.discard("disentanglement")  # (no known factors in this data set)
        if not tasks or not trainer.is_global_zero:
            return
        if trainer.fast_dev_run:
            log.info("fast_dev_run: eval.after_training (%s) skipped", ", ".join(sorted(tasks)))
            return
        log.info("measuring %s after training", ", ".join(t for t in APPLICATIONS if t in tasks))
        vae = pl_module.vae
        # (the test runs under inference mode, in which the domain classifier could not be trained)
        with torch.inference_mode(False), torch.enable_grad():
            samplers = fitted_samplers(vae, self.sampler, datamodule, self.seed) \
                if "samples" in tasks else {}
            metrics, pictures = run_applications(vae, datamodule, tasks, self.runs, samplers,
                                                 self.domain_classifier, self.seed)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)
        writer = tensorboard_writer(trainer)
        for name, picture in pictures.items():
            if writer is not None:
                add_picture(writer, f"tasks/{name}", picture, epoch_end_step(trainer), CAPTIONS.get(name, name))
