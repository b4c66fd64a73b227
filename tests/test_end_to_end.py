"""End-to-end runs on real data: the CLI as a user runs it, reproducibility, resume, eval, DDP."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import (
    DATA_ROOT,
    REPO,
    TEST_PATH,
    compose_config,
    read_metrics,
    run_cli,
    run_folders,
    tensorboard_events,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab.module import NonFiniteLossError
from vaelab.train import train

pytestmark = pytest.mark.slow
FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false"]
VOLATILE = {"wall_time_s", "config_path", "test_ckpt_path"}


def test_mnist_seed_two_epochs_matches_the_classic_example(tmp_path):
    """The classic PyTorch VAE example reaches 115.6-115.9 nats on the test set after 2 epochs."""
    cfg = compose_config(tmp_path, ["experiment=mnist_seed", "trainer.max_epochs=2", "trainer.accelerator=cpu",
                                    "trainer.enable_progress_bar=false"])
    metrics = train(cfg)
    assert 115.6 - 1.5 <= metrics["test/nelbo"] <= 115.9 + 1.5
    assert read_metrics(tmp_path / "run")["epochs"] == 2


def test_deterministic_reruns_give_identical_metrics(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = compose_config(tmp_path / name, [*FAST, "trainer.deterministic=true", "trainer.accelerator=cpu"])
        train(cfg)
        runs.append({k: v for k, v in read_metrics(tmp_path / name / "run").items() if k not in VOLATILE})
    assert runs[0] == runs[1]
    other = compose_config(tmp_path / "c", [*FAST, "trainer.deterministic=true", "trainer.accelerator=cpu", "seed=7"])
    train(other)
    assert read_metrics(tmp_path / "c" / "run")["test/nelbo"] != runs[0]["test/nelbo"]


def test_resume_from_last_checkpoint_continues_training(tmp_path):
    first = compose_config(tmp_path / "first", [*FAST, "trainer.max_epochs=1"])
    train(first)
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 5
    resumed = compose_config(tmp_path / "resumed", [*FAST, "trainer.max_epochs=3", f"ckpt_path={last}"])
    train(resumed)
    metrics = read_metrics(tmp_path / "resumed" / "run")
    assert metrics["epochs"] == 3 and metrics["global_step"] == 3 * 5  # 5 batches per epoch, counting on from 5


def test_a_run_killed_mid_epoch_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL in the middle of the second epoch, resume from last.ckpt (written every 2 steps): the
    data position, the epoch's running sums and the random state come back, so every metric equals
    the uninterrupted run's (CPU, deterministic, dynamic binarization drawing fresh pixels)."""
    args = [*FAST, "trainer.limit_train_batches=6", "trainer.deterministic=true", "trainer.accelerator=cpu",
            "data.binarize=dynamic", "callbacks.step_checkpoint.every_n_train_steps=2"]
    def cli(name, *extra):
        return run_cli("vaelab.train", [*args, f"hydra.run.dir={tmp_path / name}", *extra], tmp_path,
                       PYTHONPATH=TEST_PATH)
    assert cli("full").returncode == 0
    killed = cli("killed", "+callbacks.kill._target_=kill_at_step.KillAtStep", "+callbacks.kill.step=9")
    assert killed.returncode == -9 and not (tmp_path / "killed" / "metrics.json").exists()
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 8)  # 2 of the 6 batches of epoch 1 done
    resumed = cli("resumed", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, again = (read_metrics(tmp_path / name) for name in ("full", "resumed"))
    assert {k: v for k, v in again.items() if k not in VOLATILE} == {k: v for k, v in full.items() if k not in VOLATILE}
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_cli_run_tensorboard_checkpoint_and_eval(tmp_path):
    result = run_cli("vaelab.train", FAST, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_folders(tmp_path)
    metrics = read_metrics(run)
    assert Path(metrics["config_path"]).is_file() and metrics["config_path"].startswith(str(run))
    assert 0 <= metrics["val/active_units"] <= 20 and metrics["val/mi"] >= 0 and len(metrics["val/kl_per_dim"]) == 20
    assert sum(metrics["val/kl_per_dim"]) == pytest.approx(metrics["val/kl"], rel=1e-4)

    events = tensorboard_events(run / "tensorboard")
    scalars, images = set(events.PluginTagToContent("scalars")), set(events.PluginTagToContent("images"))
    assert {"train/loss", "train/recon", "train/kl", "val/nelbo", "val/recon", "val/kl", "test/nelbo"} <= scalars
    assert {"images/reconstructions", "images/prior_samples", "images/interpolations", "images/traversals"} <= images
    assert len(events.Tensors("images/reconstructions")) == 2  # one per epoch
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert "latent/kl_per_dim" in images
    assert "latent/test" in (run / "tensorboard" / "projector_config.pbtxt").read_text()
    for noise in ("Total FLOPs", "LeafSpec", "LitLogger"):  # Lightning's, which tell the user nothing
        assert noise not in result.stdout + result.stderr
    assert f"run folder: {run} (tensorboard --logdir {run})" in result.stdout

    best = run / "checkpoints" / "best.ckpt"
    evaluated = run_cli("vaelab.eval", [f"ckpt_path={best}", f"data.root={DATA_ROOT}", "eval.iw_samples=50",
                                        "anomaly.ood_data=fashion_mnist", "trainer.enable_progress_bar=false"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_run,) = run_folders(tmp_path, "eval")
    scores = json.loads((eval_run / "metrics.json").read_text())
    assert scores["test/nelbo"] == pytest.approx(scores["test/recon"] + scores["test/kl"], rel=1e-6)
    assert f"test/nelbo = {scores['test/nelbo']:.4f}" in evaluated.stdout
    assert scores["test/nll_iw"] < scores["test/nelbo"]  # the IWAE bound is tighter than the ELBO
    assert "test/bpd" not in scores and "val/bpd" not in metrics  # Bernoulli on grey levels: not a code length
    assert {"test/active_units", "test/mi"} <= set(scores) and len(scores["test/kl_per_dim"]) == 20
    assert 0.5 < scores["anomaly/auroc_nelbo"] <= 1 and 0.5 < scores["anomaly/auroc_nll_iw"] <= 1
    assert scores["anomaly/inliers"] == scores["anomaly/outliers"] == 10000
    for picture in ("samples_prior.png", "reconstructions.png", "anomaly_nelbo.png", "anomaly_nll_iw.png"):
        assert (eval_run / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    histograms = EventAccumulator(str(eval_run / "tensorboard"), size_guidance={"histograms": 0})
    histograms.Reload()
    assert {"anomaly/nelbo_inliers", "anomaly/nelbo_outliers"} <= set(histograms.Tags()["histograms"])


def test_ddp_sim_trains_with_two_processes_and_only_rank_zero_writes(tmp_path):
    result = run_cli("vaelab.train", [*FAST, "trainer=ddp_sim"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr
    (run,) = run_folders(tmp_path)  # one folder, not one per process
    metrics = read_metrics(run)
    assert metrics["global_step"] == 10 and "val/nelbo" in metrics
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (run / ".pl_hydra_rank_1").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["objective.beta=-1"], "vaelab: error: objective.beta must be >= 0, got -1"),
        (["model.latent_dim=0"], "vaelab: error: model.latent_dim must be >= 1, got 0"),
        (["data.download=false", "data.mirror=/nonexistent", "data.root=/nonexistent-root"],
         "vaelab: error: MNIST not found; looked in: data.root /nonexistent-root/MNIST/raw"),
    ],
)
def test_bad_input_stops_with_one_clear_line(tmp_path, args, message):
    result = run_cli("vaelab.train", [*args, "trainer.enable_progress_bar=false"], tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_unknown_group_option_on_the_command_line(tmp_path):
    result = run_cli("vaelab.train", ["model=transformer"], tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/transformer'" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_wheel_install_finds_its_configs(tmp_path):
    """A non-editable install carries conf/ inside the package."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("vaelab-*.whl")
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                                str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    probe = ("import vaelab, sys; print(vaelab.__file__); sys.argv=['vaelab-train', '--cfg', 'job', "
             "'experiment=cifar10_conv']; from vaelab.train import main; main()")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith(str(target))
    assert "name: cifar10" in result.stdout and "ConvEncoder" in result.stdout


class BreakLikelihoodAtEpoch(L.Callback):
    """Makes the Gaussian likelihood's scale underflow from the given epoch on: recon becomes infinite."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            pl_module.vae.likelihood.scale = 1e-30


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    """The step named is the first whose terms were not finite (step 5, the first of epoch 1), found on
    the device from the count of the steps before it. Catches: every step counted (the check's step,
    not 5)."""
    cfg = compose_config(tmp_path, [*FAST, "likelihood=gaussian", "trainer.max_epochs=3"])
    with pytest.raises(NonFiniteLossError, match=r"train/recon became NaN or infinite at step 5; .*last.ckpt"):
        train(cfg, extra_callbacks=[BreakLikelihoodAtEpoch(1)])
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


class CollapseEncoder(L.Callback):
    """q(z|x) = N(0, ~1) for every x: a fully collapsed posterior."""

    def on_fit_start(self, trainer, pl_module):
        with torch.no_grad():
            last = pl_module.vae.encoder.head
            last.weight.zero_()
            last.bias.zero_()


def test_a_collapsed_posterior_is_reported(tmp_path, caplog):
    cfg = compose_config(tmp_path, [*FAST, "optimizer.lr=0", "optimizer.fused=false", "trainer.max_epochs=1"])
    metrics = train(cfg, extra_callbacks=[CollapseEncoder()])
    assert metrics["val/active_units"] == 0 and metrics["val/kl"] < 0.1
    assert metrics["val/mi"] == pytest.approx(0.0, abs=0.3)  # Monte-Carlo noise of ~0.1 nats with 1000 images
    assert any("posterior has collapsed" in r.message for r in caplog.records)


def test_holdout_class_anomaly_detection(tmp_path):
    held_out = compose_config(tmp_path, [*FAST, "data.exclude_classes=[1]", "trainer.max_epochs=1"])
    train(held_out)
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    evaluated = run_cli("vaelab.eval", [f"ckpt_path={best}", f"data.root={DATA_ROOT}", "eval.iw_samples=5",
                                        "anomaly.holdout_class=1", "trainer.enable_progress_bar=false"], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (eval_run,) = run_folders(tmp_path, "eval")
    scores = json.loads((eval_run / "metrics.json").read_text())
    assert scores["anomaly/outliers"] == 1135  # the ones of the MNIST test set
    assert scores["anomaly/inliers"] == 10000 - 1135
    assert 0 <= scores["anomaly/auroc_nelbo"] <= 1


def test_ddp_sim_evaluation_reduces_metrics_over_all_test_images_exactly(tmp_path):
    """Each process scores its shard; the sums and counts added across processes give the same
    dataset means as one process (the KL does not depend on the sampled z, so it must match)."""
    train(compose_config(tmp_path, [*FAST, "trainer.max_epochs=1"]))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    scores = {}
    for trainer in ("cpu", "ddp_sim"):
        (tmp_path / trainer).mkdir()
        result = run_cli("vaelab.eval", [f"ckpt_path={best}", f"data.root={DATA_ROOT}", "eval.iw_samples=0",
                                         f"trainer={trainer}", "trainer.enable_progress_bar=false"], tmp_path / trainer)
        assert result.returncode == 0, result.stderr[-3000:]
        (eval_run,) = run_folders(tmp_path / trainer, "eval")
        scores[trainer] = json.loads((eval_run / "metrics.json").read_text())
    single, ddp = scores["cpu"], scores["ddp_sim"]
    assert ddp["test/kl"] == pytest.approx(single["test/kl"], rel=1e-5)
    assert ddp["test/kl_per_dim"] == pytest.approx(single["test/kl_per_dim"], rel=1e-5)
    assert ddp["test/active_units"] == single["test/active_units"]
    assert ddp["test/nelbo"] == pytest.approx(single["test/nelbo"], abs=0.5)  # one z sample per image: MC noise


def test_checkpoints_are_replaced_atomically(tmp_path):
    from vaelab.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # a save failing half-way: unpicklable
        io.save_checkpoint({"step": 2, "bad": lambda: None}, path)
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # and no temporary file is left
