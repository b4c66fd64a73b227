"""Train a VAE: ``python -m vaelab.train [overrides]`` (console script ``vaelab-train``)."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from vaelab import resume, run_info, startup
from vaelab.callbacks.final_metrics import epoch_metrics
from vaelab.cuda_probe import skip_failing_nvml_probe
from vaelab.entry import (
    instantiate_callbacks,
    instantiate_each,
    log,
    pin_run_dir,
    refuse_ddp_in_multirun,
    task_wrapper,
)
from vaelab.errors import instantiate
from vaelab.metric_info import RunFacts, table
from vaelab.module import VAEModule
from vaelab.plugins import refuse_missing_plugins
from vaelab.sweep_gpus import assign_gpu


def train(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict:
    """Fit the model of ``cfg``, test its best checkpoint, return the final metrics.

    ``extra_callbacks`` join those of the config (for programmatic use, e.g. benchmarks)."""
    startup.check(cfg, "train")
    assign_gpu(cfg)
    skip_failing_nvml_probe()
    pin_run_dir()
    ckpt_path, resume_callbacks = resume.prepare(cfg)  # (before any data is loaded)
    run_info.write(cfg, cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = VAEModule.from_config(OmegaConf.to_container(cfg, resolve=True))
    callbacks = [*instantiate_callbacks(cfg), *extra_callbacks, *resume_callbacks]
    loggers = instantiate_each(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    refuse_ddp_in_multirun(trainer)
    model.check_trainer(trainer)

    log.info("training %s (%s parameters) on %s", cfg.model.encoder._target_.rsplit(".", 1)[-1],
             f"{sum(p.numel() for p in model.parameters()):,}", cfg.data.name)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = epoch_metrics(trainer)
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint was saved: testing the weights of the last step")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update(epoch_metrics(trainer))
    if trainer.is_global_zero:
        print(f"{table(metrics, RunFacts.of(model))}\nrun folder: {cfg.paths.output_dir} "
              f"(tensorboard --logdir {cfg.paths.output_dir})", flush=True)
    return metrics


def optimized_value(metrics: dict | None, name: str | None) -> float | None:
    """The value a sweeper (Optuna) optimizes: NaN for a failed job (a failed trial), and a clear
    error, stopping the search, when the metric does not exist."""
    if name is None:
        return None
    if metrics is None:
        return math.nan
    if name not in metrics:
        print(f"vaelab: error: optimized_metric={name} was not logged; choose one of: "
              f"{', '.join(sorted(metrics))}", file=sys.stderr)
        raise SystemExit(2)
    return metrics[name]


@refuse_missing_plugins  # before Hydra composes the config
@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return optimized_value(task_wrapper(train)(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
