"""Joblib sweeps of single-GPU jobs on a machine with several GPUs (``hydra/launcher=joblib_gpus``),
with the GPU count faked: how many jobs run at once and which GPU each trains on."""

import pytest
import torch
from conftest import compose_config, run_cli
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

import vaelab.entry  # noqa: F401  (registers the launcher's resolver)
from vaelab.sweep_gpus import assign_gpu


def job_config(tmp_path, overrides, num: int, launcher: str = "joblib_gpus"):
    """The config of job ``num`` of a multirun with ``launcher``."""
    cfg = compose_config(tmp_path, [f"hydra/launcher={launcher}", *overrides])
    with read_write(HydraConfig.get()):
        HydraConfig.get().mode = RunMode.MULTIRUN
        HydraConfig.get().job.num = num
    return cfg


def test_each_job_trains_on_gpu_job_number_mod_the_gpu_count(tmp_path, monkeypatch):
    """Four GPUs: jobs 0-7 on GPUs 0, 1, 2, 3, 0, 1, 2, 3, so any four jobs running together use
    every GPU. Catches: every job left on the first GPU (trainer.devices=1), job // n instead of
    job mod n (jobs 0-3 all on GPU 0)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    devices = []
    for num in range(8):
        cfg = job_config(tmp_path, ["trainer=gpu"], num)
        assign_gpu(cfg)
        devices.append(list(cfg.trainer.devices))
    assert devices == [[0], [1], [2], [3], [0], [1], [2], [3]]


@pytest.mark.parametrize(("overrides", "launcher", "gpus"), [
    (["trainer=cpu"], "joblib_gpus", 4), (["trainer=gpu", "trainer.devices=[2]"], "joblib_gpus", 4),
    (["trainer=gpu"], "basic", 4), (["trainer=gpu"], "joblib_gpus", 1),
], ids=["cpu", "chosen-gpu", "sequential-launcher", "one-gpu"])
def test_a_job_that_chose_its_device_or_has_no_other_gpu_is_left_alone(tmp_path, monkeypatch, overrides, launcher,
                                                                       gpus):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = job_config(tmp_path, overrides, 3, launcher)
    before = cfg.trainer.get("devices")
    assign_gpu(cfg)
    assert cfg.trainer.get("devices") == before


@pytest.mark.parametrize(("gpus", "n_jobs"), [(4, 12), (0, 3)])
def test_the_launcher_runs_jobs_per_gpu_jobs_on_each_gpu_at_once(monkeypatch, gpus, n_jobs):
    """hydra.launcher.n_jobs = sweep.jobs_per_gpu x the visible GPUs (a machine without one counts as one)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=joblib_gpus", "sweep.jobs_per_gpu=3"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.n_jobs == n_jobs
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_a_bad_jobs_per_gpu_is_refused_before_any_job(tmp_path):
    result = run_cli("vaelab.train", ["-m", "hydra/launcher=joblib_gpus", "sweep.jobs_per_gpu=0", "objective.beta=1,2"],
                     tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "vaelab: error: sweep.jobs_per_gpu must be >= 1, got 0"
    assert not (tmp_path / "outputs").exists()
