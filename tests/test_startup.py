"""Start-up checks: every config value against its type and range, and the settings that depend
on each other or on the machine, each refused in one line before any data or folder is touched."""

import pytest
import torch
from conftest import DATA_ROOT, compose_config, run_cli
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

from vaelab import startup
from vaelab.errors import ConfigError
from vaelab.schema import TRAIN, Choice, Int, Number


@pytest.mark.parametrize("override, message", [
    ("objective.beta=abc", "objective.beta must be a number >= 0, got 'abc'"),
    ("model.latent_dim=ten", "model.latent_dim must be an integer >= 1, got 'ten'"),
    ("model.latent_dim=true", "model.latent_dim must be an integer >= 1, got true"),  # (bool is an int in Python)
    ("optimizer.lr=-1", "optimizer.lr must be >= 0, got -1"),
    ("data.batch_size=1.5", "data.batch_size must be an integer >= 1, got 1.5"),
    ("objective.beta=-1", "objective.beta must be >= 0, got -1"),
    ("data.on_device=maybe", "data.on_device must be one of true, false, auto, got 'maybe'"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs must be an integer >= -1 or null, got 2.5"),
    ("+trainer.max_time=8min", "trainer.max_time must be a duration DD:HH:MM:SS or null, got '8min'"),
    ("data.exclude_classes=[1,x]", "data.exclude_classes must be a list of integers, got [1, 'x']"),
    ("seed=-3", "seed must be >= 0 and <= 4294967295, got -3"),
])
def test_a_value_of_the_wrong_type_or_range_is_one_line_naming_the_key_and_what_it_must_be(tmp_path, override, message):
    cfg = compose_config(tmp_path, [override])
    with pytest.raises(ConfigError) as err:
        startup.check(cfg, "train")
    assert str(err.value) == message


def test_every_shipped_config_passes_the_schema(tmp_path):
    """The table must not refuse what the project ships (catches a rule narrower than its config)."""
    for overrides in ([], ["experiment=mnist_seed"], ["experiment=mnist_nll"], ["experiment=mnist_m2_100"],
                      ["experiment=cifar10_conv"], ["experiment=fashion_conv"], ["model=hierarchical"],
                      ["posterior=iaf", "prior=vamp"], ["posterior=planar", "prior=mog"], ["scheduler=cosine"],
                      ["scheduler=plateau"], ["kl_schedule=capacity"], ["kl_schedule=cyclical"], ["objective=iwae"],
                      ["objective=beta_tc"], ["likelihood=gaussian_learned"], ["likelihood=discretized_logistic"],
                      ["hparams_search=optuna"], ["debug=overfit"], ["trainer=ddp_sim"], ["logger=csv"]):
        startup.check(compose_config(tmp_path, overrides), "train")
    startup.check(compose_config(tmp_path, ["ckpt_path=x.ckpt", "sampler=gmm"], config_name="eval"), "eval")


def test_rules_describe_their_range():
    assert Int(min=1).problem("k", 0) == "k must be >= 1, got 0"
    assert Number(above=0, below=1).problem("f", 1) == "f must be > 0 and < 1, got 1"
    assert Number(min=0).problem("b", float("nan")) == "b must be a number >= 0, got nan"
    assert Choice("a", "b", null=True).problem("c", None) is None
    assert {"model.latent_dim", "optimizer.lr", "objective.beta", "data.batch_size"} <= set(TRAIN)


def test_gpu_without_a_gpu_says_how_to_run_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu but this machine has no usable GPU .*: run on the "
                                          r"CPU with trainer=cpu$"):
        startup.check(compose_config(tmp_path, ["trainer=gpu"]), "train")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"trainer.devices=4 but this machine has 1 GPU\(s\): use trainer.devices=1"):
        startup.check(compose_config(tmp_path, ["trainer=gpu", "trainer.devices=4"]), "train")
    startup.check(compose_config(tmp_path, ["trainer=gpu"]), "train")


def test_a_scheduler_watching_validation_needs_a_validation_split(tmp_path):
    with pytest.raises(ConfigError, match=r"the scheduler watches val/nelbo, but data.val_size=0 leaves no validation"):
        startup.check(compose_config(tmp_path, ["scheduler=plateau", "data.val_size=0"]), "train")
    startup.check(compose_config(tmp_path, ["scheduler=cosine", "data.val_size=0"]), "train")


def test_dataloader_workers_in_a_joblib_sweep_job_are_refused(tmp_path):
    cfg = compose_config(tmp_path, ["hydra/launcher=joblib", "data.num_workers=2", "data.on_device=false"])
    startup.check(cfg, "train")  # a single run does not use the launcher
    with read_write(HydraConfig.get()):
        HydraConfig.get().mode = RunMode.MULTIRUN
    with pytest.raises(ConfigError, match=r"^data.num_workers=2 cannot start DataLoader workers inside a "
                                          r"hydra/launcher=joblib job .*use data.num_workers=0"):
        startup.check(cfg, "train")


def test_eval_without_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"^vaelab.eval needs the checkpoint to evaluate: python -m vaelab.eval "
                                          r"ckpt_path=<run folder>/checkpoints/best.ckpt$"):
        startup.check(compose_config(tmp_path, [], config_name="eval"), "eval")


@pytest.mark.slow
@pytest.mark.parametrize("command, args, message", [
    ("vaelab.train", ["model.latent_dim=ten"], "vaelab: error: model.latent_dim must be an integer >= 1, got 'ten'"),
    ("vaelab.train", ["scheduler=plateau", "data.val_size=0"], "vaelab: error: the scheduler watches val/nelbo"),
    ("vaelab.eval", [], "vaelab: error: vaelab.eval needs the checkpoint to evaluate"),
])
def test_a_refused_command_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path, command, args, message):
    result = run_cli(command, [*args, f"data.root={DATA_ROOT}"], tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_help_lists_only_the_groups_each_command_takes(tmp_path):
    """Before: both listed every folder of conf/, with data=_base (a building block); eval listed
    model, data, ... which it does not take."""
    train_help = run_cli("vaelab.train", ["--help"], tmp_path).stdout
    groups = train_help.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "data: array, cifar10, color_dsprites, dsprites, fashion_mnist, folder, mnist\n" in groups
    assert "model: conv, hierarchical, mlp, resnet\n" in groups and "sampler: gmm, prior\n" in groups
    assert "_base" not in groups
    eval_help = run_cli("vaelab.eval", ["--help"], tmp_path).stdout
    groups = eval_help.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert [line.split(":")[0] for line in groups.strip().splitlines()[1:] if line] == [
        "completion", "disentanglement", "domain_classifier", "paths", "representation", "sample_quality",
        "sampler", "trainer"]
