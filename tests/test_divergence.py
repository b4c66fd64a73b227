"""A diverging run stops before it validates or saves; no checkpoint holds NaN or infinite
values, and the stop names one that does not; the picture and diagnostic callbacks survive
non-finite and empty inputs."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import DATA_ROOT, compose_config
from lightning.pytorch.loggers import TensorBoardLogger
from test_maths import tiny_module

from vaelab.callbacks.diagnostics import LatentDiagnostics
from vaelab.callbacks.divergence import DivergenceGuard
from vaelab.callbacks.embedding import LatentEmbedding
from vaelab.callbacks.images import LatentImages
from vaelab.checkpoint_io import AtomicCheckpointIO
from vaelab.errors import TrainingStopped
from vaelab.train import train

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "logger=csv"]


def stub_trainer(**kw):
    return SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
                           global_step=7, optimizers=[], **kw)


def test_the_limit_is_the_running_median_plus_a_margin_of_the_median_and_one_nat_per_value():
    """limit = m + 10 (|m| + 784), m the median of the last 3 readings. Catches a mean instead of
    the median (one spike of 11000 would lift the limit to ~50000) and a margin without the
    per-value term (m (1 + 10) = 3300 would stop the run at 11000)."""
    guard = DivergenceGuard(factor=10, window=3)
    guard.values_per_image = 784
    trainer = stub_trainer()
    for reading in (550.0, 300.0, 200.0, 11000.0):  # median 300 -> limit 300 + 10 (300 + 784) = 11140
        guard._check(trainer, reading, "loss")
    assert guard.limit == pytest.approx(11140.0)  # window [300, 200, 11000]
    with pytest.raises(TrainingStopped, match=r"training diverged: loss reached 1\.12e\+04 nats per image at step 7, "
                                              r"far above its running median 300 \(limit 1\.114e\+04 = median \+ 10 x"):
        guard._check(trainer, 11200.0, "loss")
    negative = DivergenceGuard(factor=10, window=3)
    negative.values_per_image = 784
    for reading in (-800.0, -800.0, -700.0):  # learned-variance likelihoods go below 0: limit -800 + 10 (800 + 784)
        negative._check(trainer, reading, "loss")
    with pytest.raises(TrainingStopped, match="loss became nan at step 7"):
        negative._check(trainer, float("nan"), "loss")


@pytest.mark.slow
def test_a_learning_rate_of_10_stops_at_the_first_reading_without_a_checkpoint(tmp_path):
    """Before: lr=1 to 1e4 ran to the end with exit 0 and losses of 1e10 to 1e23; lr=1e6 crashed
    in the histogram callback. The reading at step 5 is 1e10 nats against a limit of ~1.4e4."""
    cfg = compose_config(tmp_path, [*FAST, "optimizer.lr=10", "trainer.limit_train_batches=20",
                                    "trainer.log_every_n_steps=5", "callbacks.step_checkpoint.every_n_train_steps=7"])
    with pytest.raises(TrainingStopped, match=r"^training diverged: the training negative ELBO reached .* nats per "
                                              r"image at step 5, far above its running median .*Last good checkpoint: "
                                              r"none was written by this run. Try a lower optimizer.lr \(now 10\)"):
        train(cfg)
    assert not list((tmp_path / "run").rglob("*.ckpt"))


class BreakLikelihoodAtStep(L.Callback):
    """From the given step on the Gaussian likelihood's scale underflows: recon is infinite and the
    gradients turn the weights to NaN."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            pl_module.vae.likelihood.scale = 1e-30


@pytest.mark.slow
@pytest.mark.parametrize("guard", [True, False])
def test_a_nan_state_is_never_checkpointed_and_the_stop_names_a_verified_checkpoint(tmp_path, guard):
    """Checkpoints every 3 steps, loss logged every 50: the weights are NaN from step 5 and the
    step-6 checkpoint must not be written. Before, last.ckpt held the NaNs of step 6 and the NaN
    stop named it "last good". With the divergence guard it stops the run first; without it
    (the checkpoint writer alone) the writer refuses."""
    overrides = [*FAST, "likelihood=gaussian", "trainer.limit_train_batches=8", "trainer.max_epochs=1",
                 "callbacks.step_checkpoint.every_n_train_steps=3", *([] if guard else ["~callbacks.divergence"])]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    message = (r"training diverged: the negative ELBO of fixed validation images became nan at step 6"
               if guard else r"the training state at step 6 holds NaN or infinite values \(state_dict\.fit_sums, ")
    with pytest.raises(TrainingStopped, match=rf"^{message}.*Last good checkpoint: {last} \(step 3\)"):
        train(compose_config(tmp_path, overrides), extra_callbacks=[BreakLikelihoodAtStep(4)])
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_the_checkpoint_writer_refuses_non_finite_optimizer_state(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(2)}}, path)
    bad = {"global_step": 2, "state_dict": {"w": torch.ones(2)},
           "optimizer_states": [{"state": {0: {"exp_avg_sq": torch.tensor([1.0, float("inf")])}}}]}
    with pytest.raises(TrainingStopped, match=r"at step 2 holds NaN or infinite values \(optimizer_states\.0\."
                                              rf"state\.0\.exp_avg_sq\); training stopped without writing {path}\. "
                                              rf"Last good checkpoint: {path} \(step 1\)"):
        io.save_checkpoint(bad, path)
    assert torch.load(path, weights_only=False)["global_step"] == 1


@pytest.mark.parametrize("kl", [torch.full((3,), float("nan")), torch.tensor([1.0, float("inf"), 2.0]),
                                torch.full((3,), 1e33), torch.tensor([])])
def test_the_picture_and_diagnostic_callbacks_survive_non_finite_and_empty_inputs(tmp_path, kl):
    """A model whose weights are all NaN, and KL values that are NaN, infinite, huge (TensorBoard
    cannot bin 1e33) or empty. Catches the histogram callback's crash ("The histogram is empty,
    please file a bug report", "The input has no element")."""
    torch.manual_seed(0)
    module = tiny_module()
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))
    images = torch.rand(16, 1, 4, 4)
    datamodule = SimpleNamespace(examples=lambda n, split: (images[:n], torch.zeros(min(n, 16), dtype=torch.long)),
                                 name="mnist", val_set=None)
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    trainer = SimpleNamespace(loggers=[logger], is_global_zero=True, sanity_checking=False, current_epoch=0,
                              global_step=0, datamodule=datamodule, callback_metrics={})
    LatentImages(num_examples=4, num_samples=4, traversal_dims=2).on_train_epoch_end(trainer, module)
    diagnostics = LatentDiagnostics()
    diagnostics.kl_per_dim["val"] = kl
    diagnostics.on_validation_end(trainer, module)
    LatentEmbedding(num_images=8).on_fit_end(trainer, module)
    logger.experiment.flush()
    assert list(tmp_path.glob("events.out.tfevents.*"))
