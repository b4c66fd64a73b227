"""The evaluation tasks (sample quality, completion, representation) as configured, summarized
across an eval sweep, and run on a briefly trained MNIST model."""

import inspect
import json
import math

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from vaelab import (
    completion,
    disentanglement,
    domain_classifier,
    representation,
    sample_quality,
)
from vaelab.errors import instantiate
from vaelab.summarize import main as summarize
from vaelab.summarize import read_jobs, x_value

TASKS = {"sample_quality": (sample_quality.evaluate, 4), "completion": (completion.evaluate, 3),
         "representation": (representation.evaluate, 2), "domain_classifier": (domain_classifier.load_or_train, 1),
         "disentanglement": (disentanglement.evaluate, 2)}


def test_each_task_config_builds_its_function_with_keys_it_takes(tmp_path):
    """Every key of each group's default.yaml is a keyword of its function (a misspelt key fails
    here, not after a long evaluation); overrides such as completion.mask=center reach it."""
    cfg = compose_config(tmp_path, ["ckpt_path=x.ckpt", "completion.mask=center"], config_name="eval")
    for group, (function, positional) in TASKS.items():
        task = instantiate(cfg[group])
        assert task.func is function
        inspect.signature(function).bind(*[None] * positional, **{"seed": 0, **task.keywords})
    assert instantiate(cfg.completion).keywords["mask"] == "center"


def test_summarize_tabulates_an_eval_sweep_by_any_task_metric(tmp_path, capsys):
    """An eval job (no ``test`` key in its config) is done once it wrote metrics.json, and every
    number under a name with a '/' becomes a column."""
    for job, (beta, fd) in enumerate([("1", 30.0), ("4", 12.5)]):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"task_name": "eval"}), folder / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create([f"ckpt_path=beta{beta}.ckpt"]), folder / ".hydra" / "overrides.yaml")
        metrics = {"samples/prior/fd_domain": fd, "repr/linear_acc": 0.9 - job / 10, "test/kl_per_dim": [1.0, 2.0],
                   "ckpt_path": f"beta{beta}.ckpt"}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert summarize([str(tmp_path), "--metric", "samples/prior/fd_domain"]) == 0
    table = (tmp_path / "summary.md").read_text()
    assert "2 jobs: 2 done, 0 failed, 0 running" in table
    assert "| job | ckpt_path | samples/prior/fd_domain | repr/linear_acc |" in table  # (no status: all done)
    assert table.index("| 1 | beta4.ckpt | 12.5000 | 0.8000 |") < table.index("| 0 | beta1.ckpt | 30.0000")


def test_summarize_plots_each_metric_against_a_config_value_and_against_a_metric(tmp_path, capsys):
    """The disentanglement study sweeps ``disent_model`` (a group) and not ``objective.beta``, so
    beta is read from each job's saved config; before, the plots were only against the swept
    overrides (here: disent_model as categories), and --plot/--against did not exist."""
    for job, (model, beta, mig, recon) in enumerate([("beta_vae_1", 1, 0.05, 30.0), ("beta_vae_16", 16, 0.3, 60.0),
                                                     ("beta_tc", 6, 0.2, 40.0)]):
        folder = tmp_path / str(job)
        (folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"test": True, "objective": {"beta": beta}}), folder / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create([f"disent_model={model}"]), folder / ".hydra" / "overrides.yaml")
        (folder / "metrics.json").write_text(json.dumps({"disent/mig": mig, "disent/sap": mig / 2, "test/recon": recon}))
    args = [str(tmp_path), "--metric", "disent/mig", "--plot", "disent/mig", "disent/sap",
            "--against", "objective.beta", "test/recon"]
    assert summarize(args) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "disent_mig_vs_objective.beta.png", "disent_mig_vs_test_recon.png", "disent_sap_vs_objective.beta.png",
        "disent_sap_vs_test_recon.png"]
    jobs = read_jobs(tmp_path)
    assert [x_value(j, "objective.beta") for j in jobs] == [1, 16, 6]
    assert [x_value(j, "test/recon") for j in jobs] == [30.0, 60.0, 40.0]
    assert x_value(jobs[0], "objective.gamma") is None
    capsys.readouterr()
    assert summarize([*args[:3], "--plot", "disent/nope"]) == 2
    assert "no job logged disent/nope; choose --plot from:" in capsys.readouterr().err


LIGHT_CLASSIFIER = ["domain_classifier.epochs=1", "domain_classifier.channels=[8,16]", "domain_classifier.hidden=64"]


@pytest.mark.slow
def test_vaelab_eval_runs_the_three_tasks_on_a_briefly_trained_mnist_model(tmp_path):
    """``vaelab.eval eval.tasks=[samples,completion,representation] sampler=gmm`` on a 2-D MLP VAE
    trained on 150 batches: its samples are farther from the test images than training images are
    (FD 425 and 288 against 5 when written), its completions beat the mean training image on the
    missing pixels (MSE 0.059 to 0.062 against 0.066), and its 2-D latents separate the digits well
    above chance (0.1; NMI 0); every metric lands in metrics.json, every picture beside it."""
    from conftest import DATA_ROOT, run_cli, run_folders

    from vaelab.train import train

    cfg = compose_config(tmp_path, ["model.latent_dim=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=150",
                                    "+trainer.limit_val_batches=2", "test=false", "trainer.accelerator=cpu",
                                    "trainer.enable_progress_bar=false", "logger=none"])
    train(cfg)
    evaluated = run_cli("vaelab.eval", [
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}", f"data.root={DATA_ROOT}",
        "eval.tasks=[samples,completion,representation]", "sampler=gmm", *LIGHT_CLASSIFIER,
        "sample_quality.num_images=2000", "sample_quality.fid=off", "completion.num_images=200",
        "completion.iterations=30", "completion.burn_in=10", "completion.num_pictures=8",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (run,) = run_folders(tmp_path, "eval")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/nelbo" not in metrics  # eval.tasks left out nll
    assert metrics["samples/domain_classifier_acc"] > 0.9
    for sampler in ("train", "prior", "gmm"):
        for name in ("fd_domain", "precision_domain", "recall_domain"):
            assert math.isfinite(metrics[f"samples/{sampler}/{name}"])
    assert metrics["samples/train/fd_domain"] < 0.2 * metrics["samples/prior/fd_domain"]
    for method in ("pseudo_gibbs", "mwg", "reconstruction"):
        assert metrics[f"completion/{method}/mse"] < metrics["completion/mean_image/mse"], method
    assert 0 < metrics["completion/mwg/acceptance"] < 1 and "completion/mwg/bce" in metrics
    for name in ("linear_acc", "knn_acc", "cluster_acc", "nmi"):  # 0.40, 0.36, 0.32, 0.29 when written
        assert 0.25 < metrics[f"repr/{name}"] <= 1, name
    for picture in ("completion.png", "latent_space.png", "latent_manifold.png", "samples_gmm.png"):
        assert (run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert f"repr/nmi = {metrics['repr/nmi']:.4f}" in evaluated.stdout
    refused = run_cli("vaelab.eval", [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                      "eval.tasks=[disentanglement]", f"data.root={DATA_ROOT}"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("vaelab: error: eval.tasks=[disentanglement] needs data")


@pytest.mark.slow
def test_a_training_sweep_measures_its_applications_after_training(tmp_path):
    """``eval.after_training=[representation,samples]`` in a two-job sweep: each job's metrics.json
    carries the repr/* and samples/* metrics beside the test metrics, so one summarize table shows
    them against beta (the domain classifier trains inside the test's inference mode)."""
    from conftest import DATA_ROOT, run_cli

    sweep = run_cli("vaelab.train", ["-m", "objective.beta=1,8", "eval.after_training=[representation,samples]",
                                     *LIGHT_CLASSIFIER, "sample_quality.num_images=500", "sample_quality.fid=off",
                                     "debug=limit_batches", "trainer.max_epochs=1", f"data.root={DATA_ROOT}",
                                     "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                     "callbacks.latent_embedding=null", "hydra.sweep.dir=sweep"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert {"repr/linear_acc", "repr/knn_acc", "repr/cluster_acc", "repr/nmi", "test/nelbo",
                "samples/prior/fd_domain", "samples/train/fd_domain"} <= set(metrics)
        assert metrics["about"]["repr/nmi"].startswith("0..1")
    assert summarize([str(tmp_path / "sweep"), "--metric", "repr/linear_acc", "--descending"]) == 0
    assert "objective.beta" in (tmp_path / "sweep" / "summary.md").read_text()
    refused = run_cli("vaelab.train", ["eval.after_training=[nll]", f"data.root={DATA_ROOT}"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "vaelab: error: eval.after_training=[nll] is invalid: choose among samples, completion, representation, "
        "disentanglement, e.g. eval.after_training=[disentanglement]")
