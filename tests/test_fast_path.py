"""The fast training paths (compiled step, recorded CUDA-graph step, device-resident data, device-side metrics) against the eager one."""

import copy

import pytest
import torch
from conftest import DATA_ROOT, compose_config, read_metrics
from test_maths import tiny_module

from vaelab.errors import ConfigError
from vaelab.graph_step import GraphedStep, graph_safe_training_step
from vaelab.train import train

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "trainer.deterministic=true"]
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
COMPARED = ("train/loss", "train/recon", "train/kl", "val/nelbo", "val/recon", "val/kl", "test/nelbo")


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


@pytest.mark.slow
@pytest.mark.parametrize(("eager_path", "fast"), [
    (["compile=false"], ["compile=true"]),
    (["compile=false"], ["cuda_graph=true"]),
    pytest.param(*(["trainer.accelerator=gpu", "trainer.deterministic=false", *m] for m in (["compile=false"],
                                                                                            ["cuda_graph=true"])),
                 marks=GPU),
], ids=["compiled", "cuda_graph", "cuda_graph-gpu"])
def test_fast_run_matches_the_eager_run_and_resumes(tmp_path, eager_path, fast):
    """(Without a GPU, cuda_graph=true runs its graph-safe step eagerly, with manual optimization.)"""
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
