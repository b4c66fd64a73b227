"""A run folder belongs to one live run: a second writer is refused at once, a crashed owner
leaves no stuck lock, and a folder holding results is written only by a resume of its run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT, MIRROR, TEST_PATH, read_metrics, run_cli

from vaelab.errors import VaelabError
from vaelab.run_folder import LOCK, claim, holds_results

HOLD = ("import sys, time; from vaelab.run_folder import claim; claim(sys.argv[1]); print('claimed', flush=True); "
        "time.sleep(60)")


def hold(folder: Path) -> subprocess.Popen:
    """Another process that owns ``folder`` until it is killed."""
    env = {**os.environ, "PYTHONPATH": TEST_PATH}
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert owner.stdout.readline().strip() == "claimed"
    return owner


def test_a_live_owner_is_named_and_a_killed_one_leaves_no_stuck_lock(tmp_path):
    """Catches a lock that is not exclusive (the second claim succeeds) and a PID-file lock that
    outlives its process (the claim after SIGKILL fails)."""
    owner = hold(tmp_path)
    try:
        with pytest.raises(VaelabError, match=rf"{tmp_path} is in use by a running vaelab process \(pid {owner.pid} "):
            claim(tmp_path)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    os.close(claim(tmp_path))  # no clean-up ran, and the folder is free
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def test_a_folder_with_results_is_refused_unless_the_run_resumes_from_it(tmp_path):
    (tmp_path / ".hydra").mkdir()
    for record in (".hydra/config.yaml", "run_info.json", "failed.json", "train.log"):
        (tmp_path / record).write_text("{}")
    assert not holds_results(tmp_path)  # a run that failed before training: its folder may be reused
    os.close(claim(tmp_path))

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"weights")
    with pytest.raises(VaelabError, match=rf"{tmp_path} holds the results of an earlier run: .*ckpt_path={last}"):
        claim(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(VaelabError, match="holds a finished run"):
        claim(tmp_path, ckpt_path=str(tmp_path.parent / "elsewhere.ckpt"))
    os.close(claim(tmp_path, ckpt_path=str(last)))  # a resume of that run


def test_a_requeued_slurm_job_may_write_into_its_own_folder(tmp_path, monkeypatch):
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "slurm_job_id": "77"}))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with pytest.raises(VaelabError, match="holds a finished run"):
        claim(tmp_path)  # the same job id, but not a restart: another run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    os.close(claim(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(VaelabError, match="holds a finished run"):
        claim(tmp_path)  # (the lock now records job 77 again: this process's)


@pytest.mark.slow
def test_two_trainings_into_one_folder_the_second_is_refused_and_changes_nothing(tmp_path):
    """Run A trains into X; B, started meanwhile into X, stops at once naming A's process and
    leaves A's .hydra/config.yaml alone; after A, a fresh run into X is refused and a resume of
    A into X goes on. (Before: both exited 0 and B replaced A's config, checkpoints and metrics.)"""
    folder = tmp_path / "X"
    args = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu", "logger=csv", f"hydra.run.dir={folder}"]
    env = {**os.environ, "VAELAB_ROOT": str(tmp_path), "VAELAB_DATA_MIRROR": MIRROR, "PYTHONPATH": TEST_PATH}
    slow = ["+callbacks.slow._target_=sleep_each_step.SleepEachStep", "+callbacks.slow.seconds=1.5"]  # A: 15 s of steps
    log = tmp_path / "first.txt"
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, "-m", "vaelab.train", *args, *slow], cwd=tmp_path, env=env,
                                 stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 300
    while not (folder / "run_info.json").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    second = run_cli("vaelab.train", [*args, "seed=7"], tmp_path)
    assert first.poll() is None, "run A ended before B started: the test proves nothing"
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1] == (
        f"vaelab: error: {folder} is in use by a running vaelab process (pid {first.pid} on "
        f"{os.uname().nodename}, started {json.loads((folder / LOCK).read_text())['started']}): wait for it to end "
        "or choose another folder (hydra.run.dir=... / hydra.sweep.dir=...)")
    assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "seed: 42" in (folder / ".hydra" / "config.yaml").read_text()
    assert "seed=7" not in (folder / ".hydra" / "overrides.yaml").read_text()
    assert read_metrics(folder)["seed"] == 42

    again = run_cli("vaelab.train", args, tmp_path)
    assert again.returncode == 2 and f"vaelab: error: {folder} holds a finished run" in again.stderr
    resumed = run_cli("vaelab.train", [*args, f"ckpt_path={folder}/checkpoints/last.ckpt", "trainer.max_epochs=3"],
                      tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metrics(folder)["epochs"] == 3
