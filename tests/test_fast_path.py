"""The fast training path (compiled step, device-resident data, device-side metrics) against the eager one."""

import pytest
import torch
from conftest import DATA_ROOT, compose_config, read_metrics
from test_maths import tiny_config

from vaelab.module import VAEModule
from vaelab.train import train

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "trainer.deterministic=true"]
COMPARED = ("train/loss", "train/recon", "train/kl", "val/nelbo", "val/recon", "val/kl", "test/nelbo")


def test_compiled_terms_equal_the_eager_terms_and_gradients():
    torch.manual_seed(0)
    eager = VAEModule(tiny_config())
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
def test_compiled_run_matches_the_eager_run_and_resumes(tmp_path):
    metrics = {}
    for mode in ("false", "true"):
        train(compose_config(tmp_path / mode, [*FAST, f"compile={mode}"]))
        metrics[mode] = read_metrics(tmp_path / mode / "run")
    for name in COMPARED:
        assert metrics["true"][name] == pytest.approx(metrics["false"][name], rel=1e-4), name
    # resume on the compiled path continues from the eager path's checkpoint and validates alike
    last = tmp_path / "false" / "run" / "checkpoints" / "last.ckpt"
    for mode in ("false", "true"):
        train(compose_config(tmp_path / f"resume-{mode}", [*FAST, f"compile={mode}", "trainer.max_epochs=3",
                                                            f"ckpt_path={last}"]))
    eager, compiled = (read_metrics(tmp_path / f"resume-{m}" / "run") for m in ("false", "true"))
    assert eager["global_step"] == compiled["global_step"] == 15
    for name in COMPARED:
        assert compiled[name] == pytest.approx(eager[name], rel=1e-4), name


@pytest.mark.parametrize("overrides", [["trainer.precision=bf16-mixed"], ["model.channels_last=true"],
                                       ["trainer.precision=bf16-mixed", "model.channels_last=true"]])
def test_bf16_and_channels_last_conv_runs_stay_close_to_float32(tmp_path, overrides):
    base = [*FAST, "experiment=fashion_conv", "trainer.max_epochs=1"]
    reference = train(compose_config(tmp_path / "fp32", base))
    other = train(compose_config(tmp_path / "other", [*base, *overrides]))
    assert other["test/nelbo"] == pytest.approx(reference["test/nelbo"], rel=0.02)
