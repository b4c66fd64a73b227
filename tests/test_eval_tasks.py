"""The evaluation tasks (sample quality, completion, representation) as configured, summarized
across an eval sweep, and run on a briefly trained MNIST model."""

import inspect
import json
import math

import pytest
from conftest import compose_config
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from vaelab import completion, domain_classifier, representation, sample_quality
from vaelab.errors import instantiate
from vaelab.summarize import main as summarize

TASKS = {"sample_quality": (sample_quality.evaluate, 4), "completion": (completion.evaluate, 3),
         "representation": (representation.evaluate, 2), "domain_classifier": (domain_classifier.load_or_train, 1)}


def test_each_task_config_builds_its_function_with_keys_it_takes(tmp_path):
    """Every key of each group's default.yaml is a keyword of its function (a misspelt key fails
    here, not after a long evaluation); overrides such as completion.mask=center reach it."""
    cfg = compose_config(tmp_path, ["ckpt_path=x.ckpt", *(f"+{group}=default" for group in TASKS),
                                    "completion.mask=center"], config_name="eval")
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


@pytest.mark.slow
def test_the_three_tasks_on_a_briefly_trained_mnist_model(tmp_path):
    """A 2-D MLP VAE trained on 150 batches: its samples are farther from the test images than
    training images are (FD 425 and 288 against 5 when written), its completions beat the mean
    training image on the missing pixels (MSE 0.059 to 0.062 against 0.066), and its 2-D latents
    separate the digits well above chance (0.1; NMI 0)."""
    from vaelab.module import VAEModule
    from vaelab.samplers import GMMSampler, PriorSampler
    from vaelab.train import train

    cfg = compose_config(tmp_path, ["model.latent_dim=2", "trainer.max_epochs=1", "+trainer.limit_train_batches=150",
                                    "+trainer.limit_val_batches=2", "test=false", "trainer.accelerator=cpu",
                                    "trainer.enable_progress_bar=false", "logger=none"])
    train(cfg)
    model = VAEModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu")
    datamodule = instantiate(cfg.data)
    classifier = domain_classifier.load_or_train(datamodule, epochs=1, channels=[8, 16], hidden=64)
    assert classifier.test_accuracy > 0.9

    gmm = GMMSampler(components=10)
    gmm.fit(representation.posterior_means(model, datamodule.train_set, 1000)[0])
    metrics, pictures = sample_quality.evaluate(model, datamodule, {"prior": PriorSampler(), "gmm": gmm},
                                                classifier, num_images=2000, fid="off")
    assert pictures == {}
    for sampler in ("train", "prior", "gmm"):
        for name in ("fd_domain", "precision_domain", "recall_domain"):
            assert math.isfinite(metrics[f"samples/{sampler}/{name}"])
    assert metrics["samples/train/fd_domain"] < 0.2 * metrics["samples/prior/fd_domain"]

    metrics, pictures = completion.evaluate(model, datamodule, classifier, num_images=200, iterations=30,
                                            burn_in=10, num_pictures=8)
    for method in ("pseudo_gibbs", "mwg", "reconstruction"):
        assert metrics[f"completion/{method}/mse"] < metrics["completion/mean_image/mse"], method
    assert 0 < metrics["completion/mwg/acceptance"] < 1 and "completion/mwg/bce" in metrics
    assert pictures["completion"].shape == (3, 4 * 30 + 2, 8 * 30 + 2)  # masked, 2 methods, truth

    metrics, pictures = representation.evaluate(model, datamodule)
    for name in ("linear_acc", "knn_acc", "cluster_acc", "nmi"):  # 0.40, 0.36, 0.32, 0.29 when written
        assert 0.25 < metrics[f"repr/{name}"] <= 1, name
    assert isinstance(pictures["latent_space"], Figure)
    assert pictures["latent_manifold"].shape == (3, 20 * 29 + 1, 20 * 29 + 1)
