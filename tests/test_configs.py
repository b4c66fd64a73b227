"""Every config composes, every combination trains a step, and bad choices fail clearly."""

from pathlib import Path

import pytest
import torch
from conftest import compose_config, read_metrics
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException

import vaelab
from vaelab.errors import ConfigError, instantiate
from vaelab.train import train

CONF = Path(vaelab.__file__).parent / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_the_config_groups_offer_what_the_readme_promises():
    assert options("data") == ["array", "cifar10", "color_dsprites", "dsprites", "fashion_mnist", "folder", "mnist"]
    assert options("model") == ["conv", "hierarchical", "mlp", "resnet"]
    assert options("posterior") == ["gaussian", "iaf", "planar"]
    assert options("prior") == ["mog", "normal", "vamp"]
    assert options("sampler") == ["gmm", "prior"]
    assert options("likelihood") == ["bernoulli", "discretized_logistic", "gaussian", "gaussian_learned"]
    assert options("objective") == ["beta_tc", "dip_vae", "elbo", "factor_vae", "iwae", "m2"]
    assert options("kl_schedule") == ["capacity", "constant", "cyclical", "free_bits", "linear_warmup"]
    assert set(options("trainer")) >= {"default", "cpu", "gpu", "ddp", "ddp_sim"}
    assert options("logger") == ["csv", "many", "mlflow", "none", "tensorboard", "wandb"]
    assert set(options("experiment")) >= {"mnist_seed", "fashion_conv", "cifar10_conv"}
    assert options("debug") == ["fast_dev_run", "limit_batches", "overfit"]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_runs_a_fast_dev_run(tmp_path, experiment):
    cfg = compose_config(tmp_path, [f"experiment={experiment}", "debug=fast_dev_run", "data.eval_batch_size=64"])
    metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert {"test/nelbo", "test/recon", "test/kl"} <= set(metrics)


@pytest.mark.parametrize("likelihood", options("likelihood"))
@pytest.mark.parametrize("model", options("model"))
# (dSprites, 64 px: test_dsprites.py; a user's folder or array: test_user_data.py)
@pytest.mark.parametrize("data", [d for d in options("data") if "dsprites" not in d and d not in ("folder", "array")])
def test_every_data_model_likelihood_combination_trains(tmp_path, data, model, likelihood):
    cfg = compose_config(tmp_path, [f"data={data}", f"model={model}", f"likelihood={likelihood}",
                                    "debug=fast_dev_run", "data.batch_size=16", "data.eval_batch_size=16"])
    metrics = train(cfg)
    assert metrics["test/nelbo"] == pytest.approx(metrics["test/recon"] + metrics["test/kl"], rel=1e-5)
    vae = instantiate(cfg.model)  # the shapes of the pieces for 1- and 3-channel data
    c, h, w = cfg.data.shape
    x = torch.rand(2, c, h, w)
    params = vae.decoder(vae.encode(x).mu)
    assert params.shape == (2, vae.likelihood.param_channels(c), h, w)
    assert vae.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("objective", options("objective"))
@pytest.mark.parametrize("schedule", options("kl_schedule"))
def test_every_objective_and_kl_schedule_trains_or_refuses_clearly(tmp_path, objective, schedule):
    model = ["experiment=mnist_m2_100", "trainer.max_time=null"] if objective == "m2" else []  # M2's model
    cfg = compose_config(tmp_path, [*model, f"objective={objective}", f"kl_schedule={schedule}", "debug=fast_dev_run",
                                    "data.batch_size=16", "data.eval_batch_size=64", "eval.iw_samples=4"])
    if objective != "elbo" and schedule != "constant":
        with pytest.raises(ConfigError, match=f"objective={objective} takes no KL schedule"):
            train(cfg)
        return
    metrics = train(cfg)
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("train/loss", "test/nelbo", "test/nll_iw"))
    assert metrics["test/nll_iw"] <= metrics["test/nelbo"] + 1.0  # the IWAE bound is tighter (up to MC noise)


def test_one_override_changes_each_main_setting(tmp_path):
    cfg = compose_config(tmp_path, ["data=cifar10", "model=conv", "objective.beta=4", "model.latent_dim=64",
                                    "likelihood=gaussian", "trainer=gpu"])
    assert cfg.data.shape == [3, 32, 32] and cfg.model.encoder.shape == [3, 32, 32]
    assert cfg.objective.beta == 4 and cfg.model.encoder.latent_dim == 64 and cfg.model.decoder.latent_dim == 64
    assert cfg.model.likelihood.scale == 0.1 and cfg.trainer.accelerator == "gpu"


def test_unknown_group_option_names_the_choices():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        with pytest.raises(MissingConfigException) as err:
            compose("train", overrides=["model=transformer"])
    assert "Could not find 'model/transformer'" in str(err.value)
    assert "mlp" in str(err.value) and "conv" in str(err.value)


def test_negative_beta_in_a_run_is_a_config_error(tmp_path):
    cfg = compose_config(tmp_path, ["objective.beta=-1", "debug=fast_dev_run"])
    with pytest.raises(ConfigError, match="objective.beta must be >= 0, got -1"):
        train(cfg)


def test_a_users_own_config_folder_joins_the_search_path(tmp_path):
    own = tmp_path / "myconf" / "model"
    own.mkdir(parents=True)
    (own / "tiny_mlp.yaml").write_text(
        "defaults:\n  - mlp\nlatent_dim: 3\nencoder:\n  hidden: [16]\ndecoder:\n  hidden: [16]\n"
    )
    cfg = compose_config(tmp_path, [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "model=tiny_mlp",
                                    "debug=fast_dev_run"])
    assert cfg.model.latent_dim == 3 and cfg.model.encoder.hidden == [16]
    metrics = train(cfg)
    assert "test/nelbo" in metrics


def test_fast_dev_run_writes_metrics_json(mnist_cfg, tmp_path):
    train(mnist_cfg)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["seed"] == 42 and metrics["epochs"] == 2
    assert set(metrics) >= {"val/nelbo", "val/recon", "val/kl", "test/nelbo", "train/loss", "wall_time_s", "config_path"}
    assert metrics["val/nelbo"] == pytest.approx(metrics["val/recon"] + metrics["val/kl"], rel=1e-6)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
