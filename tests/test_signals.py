"""Ctrl-C and SIGTERM stop a run at the current step with a resumable checkpoint, and SLURM's
requeue path: Lightning's SIGUSR1 handler saves and requeues, the requeued job resumes by itself."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import DATA_ROOT, MIRROR, compose_config, read_metrics
from lightning.pytorch.trainer.connectors import signal_connector
from signal_at_step import SignalAtStep, SignalInValidation

from vaelab.train import train

pytestmark = pytest.mark.slow
# 6 batches per epoch, 2 epochs, CPU, deterministic, dynamic binarization (fresh random pixels every batch)
FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "trainer.deterministic=true", "trainer.limit_train_batches=6", "data.binarize=dynamic", "logger=csv"]
VOLATILE = {"wall_time_s", "config_path", "test_ckpt_path"}


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("uninterrupted")
    train(compose_config(folder, FAST))
    return stable(read_metrics(folder / "run"))


def test_sigterm_then_ctrl_c_stop_at_their_step_and_the_resumed_run_ends_as_the_uninterrupted_one(
        tmp_path, uninterrupted, capsys):
    """SIGTERM at step 4 (epoch 0), resume, Ctrl-C at step 9 (epoch 1), resume to the end: every
    metric equals the uninterrupted run's, so each stop wrote the exact state of its step (data
    position, running sums, random state). Catches a checkpoint taken before the step finished,
    or none at all (Lightning's own SIGTERM path exits 0 without one, Ctrl-C exits 1 without one)."""
    last = {name: tmp_path / name / "run" / "checkpoints" / "last.ckpt" for name in "ab"}
    stops = [("a", [], signal.SIGTERM, 4, 0), ("b", [f"ckpt_path={last['a']}"], signal.SIGINT, 9, 1)]
    # (the default handler, or SIG_IGN where the suite runs in the background of a shell without job control)
    sigint_before = signal.getsignal(signal.SIGINT)
    for name, resume, signum, step, epoch in stops:
        with pytest.raises(SystemExit) as stop:
            train(compose_config(tmp_path / name, [*FAST, *resume]), extra_callbacks=[SignalAtStep(step, signum)])
        assert stop.value.code == 128 + signum
        err = capsys.readouterr().err
        name_of = signal.Signals(signum).name
        assert f"vaelab: stopped by {name_of} at step {step} (epoch {epoch}); saved {last[name]}; resume with: " \
               f"python -m vaelab.train data.mirror={MIRROR} " in err
        assert err.rstrip().endswith(f"ckpt_path={last[name]}")
        assert torch.load(last[name], weights_only=False)["global_step"] == step
        assert not (tmp_path / name / "run" / "metrics.json").exists()
        assert signal.getsignal(signal.SIGINT) is sigint_before  # put back after the run
    train(compose_config(tmp_path / "c", [*FAST, f"ckpt_path={last['b']}"]))
    assert stable(read_metrics(tmp_path / "c" / "run")) == uninterrupted


def test_a_signal_during_validation_waits_for_its_end_and_the_resume_ends_as_the_uninterrupted_run(
        tmp_path, uninterrupted, capsys):
    """SIGTERM after the first validation batch of epoch 0: the validation finishes, then the run
    stops with the state after it: epoch 0 done (step 6; Lightning's epoch counter reads 1). Catches
    a checkpoint of a half-validated epoch, whose resume would lose the validation's sums."""
    with pytest.raises(SystemExit) as stop:
        train(compose_config(tmp_path / "a", FAST), extra_callbacks=[SignalInValidation()])
    assert stop.value.code == 143
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    assert f"vaelab: stopped by SIGTERM at step 6 (epoch 1); saved {last}" in capsys.readouterr().err
    train(compose_config(tmp_path / "b", [*FAST, f"ckpt_path={last}"]))
    assert stable(read_metrics(tmp_path / "b" / "run")) == uninterrupted


def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_resumes_by_itself(
        tmp_path, uninterrupted, monkeypatch, capsys):
    """A SLURM job (faked environment): SIGUSR1 (SLURM's warning before the time limit, with
    --signal=SIGUSR1@90) makes Lightning save hpc_ckpt_1.ckpt and run `scontrol requeue <job>`;
    the SIGTERM with which SLURM then stops the job writes last.ckpt at that step. Started again
    in the same folder with SLURM_RESTART_COUNT=1 and no ckpt_path, the job resumes from the
    newest checkpoint and ends as the uninterrupted run (a restart from scratch would not)."""
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vaelab", "SLURM_NODELIST": "localhost",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    commands = []
    monkeypatch.setattr(signal_connector, "call", lambda command, **kwargs: commands.append(command) or 0)
    with pytest.raises(SystemExit) as stop:
        train(compose_config(tmp_path, FAST), extra_callbacks=[SignalAtStep(4, signal.SIGUSR1), SignalAtStep(5)])
    assert stop.value.code == 143
    assert commands == [["scontrol", "requeue", "4242"]]
    run = tmp_path / "run"
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 4
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5
    assert "(a requeued SLURM job resumes from it by itself)" in capsys.readouterr().err

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    train(compose_config(tmp_path, FAST))
    assert stable(read_metrics(run)) == uninterrupted


def test_an_external_sigterm_stops_a_cli_run_within_seconds_with_a_checkpoint_at_that_step(tmp_path):
    """`kill -TERM` from outside, in the middle of a long epoch: the process ends within seconds
    with status 143 and says where it saved; the checkpoint is at the step it names, after the
    last periodic one (every 20 steps)."""
    run = tmp_path / "run"
    args = [*FAST, "trainer.limit_train_batches=100000", "trainer.max_epochs=1", "logger=none",
            "callbacks.step_checkpoint.every_n_train_steps=20", f"hydra.run.dir={run}"]
    env = {**os.environ, "VAELAB_ROOT": str(tmp_path), "VAELAB_DATA_MIRROR": MIRROR}
    log = tmp_path / "stderr.txt"  # (a file: a pipe nobody reads while the run goes on could fill and block it)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vaelab.train", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=out)
    periodic = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not periodic.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text()[-3000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert time.monotonic() - sent < 20
    err = log.read_text()
    assert proc.returncode == 143, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("vaelab: stopped by SIGTERM")]
    step = int(re.search(r"at step (\d+) ", line).group(1))
    assert step > 20 and torch.load(periodic, weights_only=False)["global_step"] == step
    assert f"saved {periodic}; resume with: python -m vaelab.train " in line
