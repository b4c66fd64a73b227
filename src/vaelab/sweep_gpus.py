"""Sweeps of single-GPU jobs run side by side on one machine (``hydra/launcher=joblib_gpus``):
``sweep.jobs_per_gpu`` jobs at once on each visible GPU, job i on GPU i mod n.

Hydra's joblib launcher runs its jobs in worker processes of one machine; a job asking for one
GPU (``trainer.devices=1``) would otherwise train on the first GPU, whatever the machine has."""

from __future__ import annotations

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict


def jobs_at_once(jobs_per_gpu: int) -> int:
    """The joblib launcher's ``n_jobs``: ``jobs_per_gpu`` (checked by ``startup.StartupChecks``
    before the launcher reads it) for each visible GPU (a machine without one counts as one)."""
    return max(torch.cuda.device_count(), 1) * jobs_per_gpu


def job_gpu(job_num: int, gpu_count: int) -> int:
    """The GPU of sweep job ``job_num``: consecutive jobs, which run at the same time, go to
    different GPUs, each GPU taking every n-th (so with ``jobs_per_gpu`` k, any n k jobs running
    together are k on each GPU)."""
    return job_num % gpu_count


def assign_gpu(cfg: DictConfig) -> None:
    """In a job of a joblib sweep that trains on one GPU (``trainer.accelerator`` gpu or cuda,
    ``trainer.devices=1``) on a machine with several: ``trainer.devices=[job_gpu(job number, n)]``.
    Other runs (single runs, other launchers, a chosen device list, the CPU) are left alone."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    if "joblib" not in str(HydraConfig.get().launcher.get("_target_", "")):
        return
    if cfg.trainer.get("accelerator") not in ("gpu", "cuda") or cfg.trainer.get("devices") != 1:
        return
    gpu_count = torch.cuda.device_count()
    if gpu_count > 1:
        with open_dict(cfg):
            cfg.trainer.devices = [job_gpu(HydraConfig.get().job.num, gpu_count)]
