"""The fast training paths (compiled step, recorded CUDA-graph step, device-resident data, device-side metrics)
against the eager one, and the per-step costs around them that vaelab trims."""

import copy
import ctypes

import lightning as L
import pytest
import torch
from conftest import DATA_ROOT, compose_config, read_metrics
from hydra.utils import instantiate
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf
from test_maths import tiny_module

from vaelab import cuda_probe, direct_step
from vaelab.callbacks import progress_bar
from vaelab.callbacks.callback import Callback
from vaelab.callbacks.model_checkpoint import ModelCheckpoint
from vaelab.checkpoints import carry_optimizer_steps
from vaelab.errors import ConfigError
from vaelab.graph_step import GraphedStep, graph_safe_training_step
from vaelab.module import VAEModule
from vaelab.objectives import Terms
from vaelab.profiler import NoProfiler
from vaelab.train import train

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "trainer.deterministic=true"]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
COMPARED = ("train/loss", "train/recon", "train/kl", "val/nelbo", "val/recon", "val/kl", "test/nelbo")


@pytest.mark.parametrize(("overrides", "automatic"), [
    ([], False), (["+trainer.gradient_clip_val=1.0"], True), (["+trainer.accumulate_grad_batches=2"], True),
    (["scheduler=cosine"], True), (["experiment=dsprites_beta", "disent_model=factor_vae"], False),
])
def test_the_optimizer_steps_by_lightnings_automatic_optimization_only_where_the_run_needs_it(tmp_path, overrides,
                                                                                              automatic):
    """Clipping, accumulation and a scheduler are Lightning's automatic optimization's to do; every
    other run steps manually (FactorVAE, which trains a discriminator too, always)."""
    config = compose_config(tmp_path, [*FAST, *overrides])
    module = VAEModule.from_config(OmegaConf.to_container(config, resolve=True))
    module.trainer = instantiate(config.trainer, logger=False)
    module.configure_model()
    assert module.automatic_optimization is automatic


class OptimizerStepListener(L.Callback):
    """Counts the optimizer steps it hears of (Lightning's on_before_optimizer_step)."""

    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1


@pytest.mark.parametrize(("settings", "direct"), [
    ({}, True), ({"precision": "bf16-mixed"}, True), ({"precision": "bf16-true"}, True),
    ({"callbacks": [OptimizerStepListener()]}, False), ({"strategy": "ddp", "devices": 1}, False),
    ({"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}, False),
], ids=["default", "bf16-mixed", "bf16-true", "listener", "ddp", "loss-scaling"])
def test_the_manual_step_leaves_out_lightnings_layers_only_where_they_would_do_nothing(settings, direct):
    """One device, no loss scaling and no hook of the backward pass or optimizer step overridden:
    backward() and step() directly. Catches: a listening callback, gradient synchronisation or a
    loss scaler left out of the decision."""
    module = tiny_module()
    module.trainer = L.Trainer(accelerator="cpu", logger=False, **settings)
    module.configure_model()
    assert module.automatic_optimization is False and module.steps_directly is direct


@pytest.mark.slow
def test_the_direct_step_trains_and_counts_steps_as_lightnings_manual_step(tmp_path, monkeypatch):
    """A run with a callback listening to the optimizer step keeps Lightning's manual step (the
    callback hears every step); the same run without it steps directly, to the same metrics and
    global_step. Catches: the direct step not counted by Lightning's loop (global_step 0, no
    step checkpoint), the listener not heard (the direct step taken anyway)."""
    direct_steps = []
    monkeypatch.setattr(direct_step, "step", lambda optimizer, step=direct_step.step: (direct_steps.append(1),
                                                                                       step(optimizer)))
    listener = OptimizerStepListener()
    train(compose_config(tmp_path / "lightning", FAST), extra_callbacks=[listener])
    assert not direct_steps
    train(compose_config(tmp_path / "direct", FAST))
    lightning, direct = (read_metrics(tmp_path / name / "run") for name in ("lightning", "direct"))
    assert listener.calls == len(direct_steps) == lightning["global_step"] == direct["global_step"] > 0
    for name in COMPARED:
        assert direct[name] == pytest.approx(lightning[name], rel=1e-6), name


def test_a_resume_keeps_the_step_count_of_whichever_optimization_path_counted_last():
    """Lightning counts global_step in its automatic or its manual loop, whichever the run used: a
    run resumed on the other path, and then on the first again, keeps its count. Catches: the count
    carried only into a loop that has counted nothing (the second resume would go back to 10)."""
    def progress(completed):
        return {"total": {"ready": completed, "started": completed, "processed": completed, "completed": completed},
                "current": {"ready": 0, "started": 0, "processed": 0, "completed": 0}}

    loop = {"epoch_loop.automatic_optimization.optim_progress": {"optimizer": {"step": progress(10)}},
            "epoch_loop.manual_optimization.optim_step_progress": progress(0)}
    checkpoint = {"loops": {"fit_loop": loop}}
    carry_optimizer_steps(checkpoint, manual=True)  # written by automatic optimization, resumed manually
    assert loop["epoch_loop.manual_optimization.optim_step_progress"]["total"]["completed"] == 10
    loop["epoch_loop.manual_optimization.optim_step_progress"] = progress(15)  # five manual steps later
    carry_optimizer_steps(checkpoint, manual=False)  # resumed with clipping: automatic again
    assert loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["total"]["completed"] == 15
    carry_optimizer_steps(checkpoint, manual=True)  # and back: nothing to carry
    assert loop["epoch_loop.manual_optimization.optim_step_progress"]["total"]["completed"] == 15


def test_lightning_calls_a_vaelab_callback_only_on_the_per_step_hooks_it_overrides():
    """The per-step hooks a vaelab ``Callback`` leaves alone are None, which Lightning skips; those it
    overrides (here on_train_batch_end, on a subclass of a subclass) are called at every step.
    Catches: every per-step hook set to None, or a parent's override replaced by None."""
    class Counting(Callback):
        def __init__(self):
            self.calls = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.calls += 1

    class Child(Counting):
        pass

    callback = Child()
    assert Child.on_before_backward is None and Child.on_train_batch_start is None
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(BoringModel())
    assert callback.calls == 3


@pytest.mark.parametrize("settings", [{"monitor": "val/nelbo", "mode": "min", "save_last": True},
                                      {"save_top_k": 0, "save_last": True, "every_n_train_steps": 3}],
                         ids=["best", "every_3_steps"])
def test_vaelabs_model_checkpoint_keeps_lightnings_state_key_and_saves_at_the_same_steps(tmp_path, settings):
    """vaelab's ModelCheckpoint formats its state key once and has no batch-end hook where it saves
    neither every N steps nor on a timer: the key is Lightning's (checkpoints of either resume
    with the other), and it saves at the same steps in a run (6 steps, validation at the end).
    Catches: a key of its own (a resume would lose the callback's state), the batch-end hook
    dropped from a checkpoint saved every N steps (no save at step 3)."""
    ours, theirs = ModelCheckpoint(dirpath=tmp_path, **settings), lightning_callbacks.ModelCheckpoint(**settings)
    assert ours.state_key == theirs.state_key
    saved = {}
    for name, callback in (("ours", ModelCheckpoint(dirpath=tmp_path / "ours", **settings)),
                           ("theirs", lightning_callbacks.ModelCheckpoint(dirpath=tmp_path / "theirs", **settings))):
        steps = saved[name] = []
        callback._save_checkpoint = lambda trainer, path, steps=steps: steps.append(trainer.global_step)
        module = BoringModel()
        module.validation_step = lambda batch, batch_idx, module=module: module.log("val/nelbo", 1.0)
        L.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, callbacks=[callback]).fit(module)
    assert saved["ours"] == saved["theirs"] and saved["ours"]


def test_compiled_terms_equal_the_eager_terms_and_gradients():
    torch.manual_seed(0)
    eager = tiny_module().vae
    x, eps = torch.rand(5, 1, 4, 4), torch.randn(2, 5, 3)
    compiled = torch.compile(eager._eager_forward)

    def loss(outputs):
        _, log_q, log_p, _, _, kl_per_dim, _, log_px = outputs
        return -log_px.mean() + kl_per_dim.sum(-1).mean() + (log_q - log_p).mean()

    a, b = loss(eager._eager_forward(x, None, eps)), loss(compiled(x, None, eps))
    torch.testing.assert_close(a, b)
    grads_a = torch.autograd.grad(a, list(eager.parameters()))
    grads_b = torch.autograd.grad(b, list(eager.parameters()))
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_the_epoch_sums_weigh_each_batch_by_its_size_and_count_the_steps_until_a_term_is_not_finite():
    """``fit_sums`` = (sum_b n_b loss_b, sum_b n_b recon_b, sum_b n_b kl_b, sum_b n_b); ``finite_steps``
    counts the steps after which every sum was finite (a NaN stays in its sum, so later steps are not
    counted). Catches: the terms not weighted by the batch size, the image count weighted by anything
    but 1, every step counted (the NaN step and those after it too)."""
    module = tiny_module()

    def record(loss, recon, kl, size):
        module.record_step(Terms(*(torch.tensor(v) for v in (loss, recon, kl))), size)

    record(3.0, 2.0, 1.0, 4)
    record(7.0, 5.0, 2.0, 2)
    assert module.fit_sums.tolist() == [4 * 3 + 2 * 7, 4 * 2 + 2 * 5, 4 * 1 + 2 * 2, 6]
    assert module.finite_steps.item() == 2
    record(float("nan"), float("nan"), 1.0, 3)
    record(1.0, 1.0, 1.0, 3)
    assert module.finite_steps.item() == 2 and module.fit_sums[1].isnan() and module.fit_sums[2] == 14


@pytest.mark.slow
@pytest.mark.parametrize(("eager_path", "fast"), [
    # Lightning's automatic optimization (asked for by clipping at a norm no gradient reaches: the
    # gradients are multiplied by exactly 1) against the manual step of the default path
    (["+trainer.gradient_clip_val=1.0e9"], []),
    (["compile=false"], ["compile=true"]),
    (["compile=false"], ["cuda_graph=true"]),
    pytest.param(*(["trainer.accelerator=gpu", "trainer.deterministic=false", *m] for m in (["compile=false"],
                                                                                            ["cuda_graph=true"])),
                 marks=GPU),
], ids=["manual_step", "compiled", "cuda_graph", "cuda_graph-gpu"])
def test_fast_run_matches_the_eager_run_and_resumes(tmp_path, eager_path, fast):
    """(Without a GPU, cuda_graph=true runs its graph-safe step eagerly, with manual optimization.)
    Catches for the manual step: no zero_grad (the gradients add up over steps), the step before
    the backward pass, a resume that restarts the other path's step count."""
    metrics = {}
    for name, mode in (("eager", eager_path), ("fast", fast)):
        train(compose_config(tmp_path / name, [*FAST, *mode]))
        metrics[name] = read_metrics(tmp_path / name / "run")
    for name in COMPARED:
        assert metrics["fast"][name] == pytest.approx(metrics["eager"][name], rel=1e-4), name
    # each path resumes from the other's checkpoint, goes on counting steps and validates alike
    for name, mode, other in (("eager", eager_path, "fast"), ("fast", fast, "eager")):
        last = tmp_path / other / "run" / "checkpoints" / "last.ckpt"
        train(compose_config(tmp_path / f"resume-{name}", [*FAST, *mode, "trainer.max_epochs=3", f"ckpt_path={last}"]))
    eager, resumed = (read_metrics(tmp_path / f"resume-{name}" / "run") for name in ("eager", "fast"))
    assert eager["global_step"] == resumed["global_step"] == 15
    for name in COMPARED:
        assert resumed[name] == pytest.approx(eager[name], rel=1e-4), name


@pytest.mark.parametrize("overrides", [["trainer.precision=bf16-mixed"], ["model.channels_last=true"],
                                       ["trainer.precision=bf16-mixed", "model.channels_last=true"]])
def test_bf16_and_channels_last_conv_runs_stay_close_to_float32(tmp_path, overrides):
    base = [*FAST, "experiment=fashion_conv", "trainer.max_epochs=1"]
    reference = train(compose_config(tmp_path / "fp32", base))
    other = train(compose_config(tmp_path / "other", [*base, *overrides]))
    assert other["test/nelbo"] == pytest.approx(reference["test/nelbo"], rel=0.02)


@GPU
@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_graph_replays_equal_the_eager_steps(precision):
    """Recorded once per batch shape (a full and a smaller last batch) and replayed, the graph-safe
    step gives the parameters, sums and noise of running it eagerly from the same seed."""
    eager = tiny_module().cuda()
    graphed = copy.deepcopy(eager)
    step = GraphedStep(graph_safe_training_step(graphed), state=lambda: list(graphed.buffers()))
    batches = [torch.rand(b, 1, 4, 4, device="cuda").round() for b in (6, 6, 4, 6, 4)]
    for module, run in ((eager, graph_safe_training_step(eager)), (graphed, step)):
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-2, fused=True)
        torch.manual_seed(0)
        for x in batches:  # (autocast around the step only, as Lightning does: its cast weights are cached)
            with torch.autocast("cuda", dtype=precision, enabled=precision != torch.float32):
                run(x, None)
            optimizer.step()
    assert len(step.graphs) == 2
    for a, b in zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("override", ["kl_schedule=linear_warmup", "scheduler=cosine", "+trainer.gradient_clip_val=1.0",
                                      "trainer=ddp_sim"])
def test_cuda_graph_refuses_what_a_recorded_step_cannot_follow(tmp_path, override):
    config = compose_config(tmp_path, ["cuda_graph=true", override])
    with pytest.raises(ConfigError, match="^cuda_graph=true does not support .*: use cuda_graph=false"):
        train(config)


@pytest.mark.parametrize("nvml_present", [False, True])
def test_the_cuda_probe_skips_the_nvml_look_up_only_where_it_cannot_succeed(monkeypatch, nvml_present):
    """With NVML absent, torch's NVML-based probe fails every time and falls back to the CUDA
    runtime's answer: turning it off gives the same answer. Catches: the setting turned off where
    NVML is present (its probe there is the one that does not initialize CUDA)."""
    monkeypatch.setenv(cuda_probe.NVML_SETTING, "1")
    if nvml_present:
        monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
    elif torch.cuda.is_available():
        pytest.skip("NVML is present here")
    before = torch.cuda.is_available()
    assert cuda_probe.skip_failing_nvml_probe() is not nvml_present
    assert cuda_probe.os.environ[cuda_probe.NVML_SETTING] == ("1" if nvml_present else "0")
    assert torch.cuda.is_available() == before


def test_a_run_profiles_nothing_by_default_and_a_chosen_profiler_replaces_that(tmp_path):
    """The default profiler hands Lightning one shared empty context per hook call; trainer.profiler=simple
    still profiles. Catches: the override of the config node by a name refused, or ignored."""
    quiet = instantiate(compose_config(tmp_path, FAST).trainer)
    assert isinstance(quiet.profiler, NoProfiler)
    assert quiet.profiler.profile("a") is quiet.profiler.profile("b")
    simple = instantiate(compose_config(tmp_path, [*FAST, "trainer.profiler=simple"]).trainer)
    assert isinstance(simple.profiler, SimpleProfiler)


def test_the_progress_bar_is_fed_at_its_redraw_rate_and_at_each_epochs_last_batch(monkeypatch):
    """Steps of 1 ms, 3 epochs of 300 batches, 10 redraws a second: the bar is handed the count at the
    first batch, then once 0.1 s after the last hand-over, and at each epoch's last batch. Catches: a
    last batch skipped (the bar would end short of its total), the interval in steps, not seconds."""
    clock = iter(range(10**6))
    monkeypatch.setattr(progress_bar.time, "monotonic", lambda: next(clock) / 1000)
    fed = []
    monkeypatch.setattr(progress_bar.RichProgressBar, "on_train_batch_end",
                        lambda self, trainer, module, outputs, batch, batch_idx: fed.append(batch_idx + 1))
    monkeypatch.setattr(progress_bar.RateLimitedProgressBar, "total_train_batches", 300)
    bar = progress_bar.RateLimitedProgressBar(refresh_rate=10)
    for epoch in range(3):
        for batch_idx in range(300):
            bar.on_train_batch_end(None, None, None, None, batch_idx)
    # (epoch 0 at 0-299 ms, handed over at 0, 100, 200 and its last batch, 299 ms; then 399, 499, 599 ...)
    assert fed == [1, 101, 201, 300, 100, 200, 300, 100, 200, 300]

