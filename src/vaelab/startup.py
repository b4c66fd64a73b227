"""What is checked once at start-up, before any data is loaded or run folder written: the
config's types and ranges (``schema.py``), and the settings that depend on each other or on
the machine. ``train`` and ``eval`` call ``check`` first; for a single run the Hydra callback
``StartupChecks`` calls it before Hydra creates the run folder, so a refused command leaves
no folder behind.
"""

from __future__ import annotations

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vaelab import schema
from vaelab.errors import ConfigError, exit_if_refused

RULES = {"train": schema.TRAIN, "eval": schema.EVAL}


def check(cfg: DictConfig, command: str) -> None:
    """Raise ConfigError (one line: the key and the fix) for the first problem found."""
    if command == "eval" and OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("vaelab.eval needs the checkpoint to evaluate: "
                          "python -m vaelab.eval ckpt_path=<run folder>/checkpoints/best.ckpt")
    schema.validate(cfg, RULES[command])
    check_accelerator(cfg)
    if command == "train":
        check_validation_metric(cfg)
        check_joblib_workers(cfg)


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer=gpu`` on a machine without a usable GPU, or more GPUs than it has."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator not in ("gpu", "cuda"):
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no usable GPU "
                          "(torch.cuda.is_available() is False): run on the CPU with trainer=cpu")
    devices = OmegaConf.select(cfg, "trainer.devices")
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > available:
        raise ConfigError(f"trainer.devices={devices} but this machine has {available} GPU(s): "
                          f"use trainer.devices={available} (or -1 for all)")


def check_validation_metric(cfg: DictConfig) -> None:
    """A scheduler watching a validation metric (``scheduler=plateau``) needs a validation split."""
    monitor = OmegaConf.select(cfg, "scheduler.lightning.monitor")
    if not isinstance(monitor, str) or not monitor.startswith("val/"):
        return
    if OmegaConf.select(cfg, "data.val_size") == 0:
        raise ConfigError(f"the scheduler watches {monitor}, but data.val_size=0 leaves no validation split: "
                          "use data.val_size=5000 (any > 0) or a scheduler without a metric (scheduler=cosine)")
    if OmegaConf.select(cfg, "trainer.limit_val_batches") == 0:
        raise ConfigError(f"the scheduler watches {monitor}, but trainer.limit_val_batches=0 turns validation off: "
                          "allow validation batches or use scheduler=cosine")


def check_joblib_workers(cfg: DictConfig) -> None:
    """Jobs of Hydra's joblib launcher run in worker processes that cannot start DataLoader
    workers of their own (Hydra #964)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default=""))
    workers = OmegaConf.select(cfg, "data.num_workers", default=0)
    if "joblib" in launcher and workers > 0:
        raise ConfigError(f"data.num_workers={workers} cannot start DataLoader workers inside a hydra/launcher=joblib "
                          "job (its worker processes cannot start processes of their own, Hydra #964): use "
                          "data.num_workers=0 (the default) with data.on_device=auto, which needs no workers")


class StartupChecks(Callback):
    """Hydra callback: the start-up checks of a single run, before Hydra makes its folder. (A
    multirun checks each job as it starts: a refused job leaves ``failed.json``; before any job,
    it checks what its launcher reads, ``sweep.jobs_per_gpu``.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.job.config_name") == "train":
            exit_if_refused(schema.validate, config, {"sweep.jobs_per_gpu": schema.TRAIN["sweep.jobs_per_gpu"]})

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        command = OmegaConf.select(config, "hydra.job.config_name")  # train or eval
        if command not in RULES:
            return
        HydraConfig.instance().set_config(config)
        exit_if_refused(check, config, command)
