"""Sweeps: a multirun of the CLI, a failing job, the summary table and plots, the run records."""

import csv
import json
import os

import pytest
from conftest import DATA_ROOT, read_metrics, run_cli, run_folders
from omegaconf import OmegaConf

from vaelab.summarize import main as summarize

pytestmark = pytest.mark.slow
FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1", "logger=csv"]


def sweep_folder(root):
    (folder,) = (root / "outputs" / "train" / "multirun").iterdir()
    return folder


def test_a_sweep_with_a_failing_job_still_runs_and_summarizes_the_others(tmp_path):
    """... and exits 1 (before: 0), so that scripts and CI see the failure."""
    result = run_cli("vaelab.train", ["-m", "objective.beta=1,-1,4", *FAST], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    failure = json.loads((sweep / "1" / "failed.json").read_text())
    assert failure["error"].startswith("objective.beta must be >= 0")
    assert "job 1 failed: objective.beta must be >= 0" in result.stdout + result.stderr
    info = json.loads((sweep / "0" / "run_info.json").read_text())
    assert info["overrides"][0] == "objective.beta=1" and len(info["overrides"]) == 1 + len(FAST)
    assert info["seed"] == 42
    assert {"vaelab_version", "git_commit", "git_dirty", "torch", "lightning", "device"} <= set(info)

    assert summarize([str(sweep), "--metric", "test/nelbo"]) == 0
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done", "done", "failed"]
    done = {r["objective.beta"]: float(r["test/nelbo"]) for r in rows if r["status"] == "done"}
    assert set(done) == {"1", "4"}
    assert float(rows[0]["test/nelbo"]) <= float(rows[1]["test/nelbo"])  # sorted by the metric
    for job, beta in (("0", "1"), ("2", "4")):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert done[beta] == pytest.approx(metrics["test/nelbo"], rel=1e-5)
    markdown = (sweep / "summary.md").read_text()
    assert "3 jobs: 2 done, 1 failed, 0 running" in markdown and "job 1 (failed): objective.beta" in markdown
    plots = sorted(p.name for p in (sweep / "plots").iterdir())
    assert plots == ["rate_distortion.png", "test_nelbo_vs_objective.beta.png"]
    assert any((sweep / "tensorboard").iterdir())


def test_summarize_refuses_an_unknown_metric(tmp_path, capsys):
    run_cli("vaelab.train", ["-m", "objective.beta=1", *FAST], tmp_path)
    assert summarize([str(sweep_folder(tmp_path)), "--metric", "test/nope"]) == 2
    assert "no job logged test/nope; choose --metric from:" in capsys.readouterr().err


def test_rerun_of_a_deterministic_cpu_run_gives_identical_metrics(tmp_path):
    first = run_cli("vaelab.train", ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.deterministic=true",
                                     "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "seed=3"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = run_folders(tmp_path)
    result = run_cli("vaelab.rerun", [str(run)], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "metrics identical" in result.stdout
    (rerun,) = run_folders(tmp_path, "rerun")
    assert read_metrics(rerun)["test/nelbo"] == read_metrics(run)["test/nelbo"]
    assert read_metrics(rerun)["seed"] == 3


def test_a_joblib_sweep_runs_two_jobs_in_parallel_processes(tmp_path):
    result = run_cli("vaelab.train", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                      "model.latent_dim=2,8", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    assert summarize([str(sweep)]) == 0
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model.latent_dim"] for r in rows) == ["2", "8"] and {r["status"] for r in rows} == {"done"}
    pids = {json.loads((sweep / job / "run_info.json").read_text())["pid"] for job in ("0", "1")}
    assert len(pids) == 2 and os.getpid() not in pids


def test_dataloader_workers_in_a_joblib_sweep_are_refused_in_one_line_per_job(tmp_path):
    """Before: both jobs failed with "'Process' object has no attribute 'env'" and the sweep exited 0."""
    result = run_cli("vaelab.train", ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data.num_workers=2",
                                      "data.on_device=false", "model.latent_dim=2,8", *FAST], tmp_path)
    assert result.returncode == 1
    sweep = sweep_folder(tmp_path)
    for job in ("0", "1"):
        error = json.loads((sweep / job / "failed.json").read_text())["error"]
        assert error.startswith("data.num_workers=2 cannot start DataLoader workers inside a hydra/launcher=joblib job")
    assert "0 of 2 jobs done" in result.stdout + result.stderr


def test_ddp_inside_a_multirun_is_refused_with_the_supported_ways(tmp_path):
    result = run_cli("vaelab.train", ["-m", "trainer=ddp_sim", *FAST], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    failure = json.loads((sweep_folder(tmp_path) / "0" / "failed.json").read_text())
    assert failure["error"].startswith("multi-process training (trainer=ddp / ddp_sim) cannot run inside a Hydra multirun")
    assert "hydra/launcher=submitit_slurm" in failure["error"]


def test_the_slurm_launcher_config_composes(tmp_path):
    result = run_cli("vaelab.train", ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4",
                                      "trainer=ddp", "trainer.num_nodes=2", "--cfg", "hydra"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    assert "gpus_per_node: 4" in result.stdout


def test_an_optuna_search_runs_two_trials_and_returns_the_metric(tmp_path):
    result = run_cli("vaelab.train", ["hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                      "hydra.sweeper.sampler.n_startup_trials=2", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_folder(tmp_path)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    values = [read_metrics(sweep / job)["val/nelbo"] for job in ("0", "1")]
    assert best.best_value == pytest.approx(min(values))
    assert set(best.best_params) == {"objective.beta", "model.latent_dim", "optimizer.lr"}


def test_an_optuna_search_for_a_metric_that_does_not_exist_stops_clearly(tmp_path):
    result = run_cli("vaelab.train", ["hparams_search=optuna", "hydra.sweeper.n_trials=2",
                                      "optimized_metric=val/nope", *FAST], tmp_path)
    assert result.returncode == 2
    assert "vaelab: error: optimized_metric=val/nope was not logged; choose one of:" in result.stderr
    assert "val/nelbo" in result.stderr


def test_rerun_comparison_and_version_warnings():
    from vaelab.rerun import compare, version_warnings

    old = {"test/nelbo": 100.0, "seed": 1, "wall_time_s": 5.0, "val/kl": 3.0}
    assert compare(old, {**old, "wall_time_s": 9.0}) == []  # wall time may differ
    lines = compare(old, {**old, "test/nelbo": 100.5, "val/kl": 3.0, "extra/metric": 1.0})
    assert lines == ["extra/metric: <missing> -> 1.0", "test/nelbo: 100.0 -> 100.5 (difference +0.5)"]
    warnings = version_warnings({"vaelab_version": "0.0.1", "git_commit": "0" * 40, "git_dirty": False})
    assert any("vaelab version differs: recorded 0.0.1" in w for w in warnings)
    assert any(f"recorded commit {'0' * 40}" in w for w in warnings)
