"""Checkpoints by time as well as by steps, and a full disk: one line, the previous checkpoint intact."""

import errno
import subprocess
import tempfile
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA_ROOT, TEST_PATH, compose_config, read_metrics, run_cli

from vaelab.callbacks import timed_checkpoint
from vaelab.callbacks.timed_checkpoint import TimedCheckpoint
from vaelab.checkpoint_io import AtomicCheckpointIO
from vaelab.errors import DiskFullError

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "logger=csv"]


def test_a_checkpoint_comes_when_the_interval_has_passed_since_the_last_checkpoint_of_any_kind(monkeypatch, tmp_path):
    clock = [0.0]
    monkeypatch.setattr(timed_checkpoint.time, "monotonic", lambda: clock[0])
    saved = []
    callback = TimedCheckpoint(str(tmp_path / "last.ckpt"), minutes=1)

    def save(path, weights_only):
        saved.append(clock[0])
        callback.on_save_checkpoint(trainer, None, {})  # (as Lightning calls it for every checkpoint)

    trainer = SimpleNamespace(world_size=1, global_step=1, log_every_n_steps=50, save_checkpoint=save)
    callback.on_train_start(trainer, None)
    for now in (30, 59.9, 60, 61, 100, 150, 159):
        clock[0] = now
        if now == 100:  # an epoch-end checkpoint: the interval counts from it
            callback.on_save_checkpoint(trainer, None, {})
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert saved == [60]
    clock[0] = 160
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert saved == [60, 160]


def test_by_default_a_run_is_checkpointed_every_5_minutes_and_every_1000_steps(tmp_path):
    cfg = compose_config(tmp_path)
    assert cfg.callbacks.timed_checkpoint.minutes == 5.0 and cfg.callbacks.step_checkpoint.every_n_train_steps == 1000


@pytest.mark.slow
def test_a_run_killed_long_before_its_first_step_checkpoint_resumes_from_its_timed_one(tmp_path):
    """SIGKILL at step 7 of the first epoch, steps checkpointed every 1000: before, nothing was
    saved (and resuming from the missing last.ckpt was a traceback). With a 0.01 s interval
    last.ckpt is that of step 7, and the resumed run completes both epochs."""
    args = [*FAST, "trainer.limit_train_batches=10", "callbacks.timed_checkpoint.minutes=0.0002"]

    def cli(name, *extra):
        return run_cli("vaelab.train", [*args, f"hydra.run.dir={tmp_path / name}", *extra], tmp_path,
                       PYTHONPATH=TEST_PATH)

    killed = cli("killed", "+callbacks.kill._target_=kill_at_step.KillAtStep", "+callbacks.kill.step=7")
    assert killed.returncode == -9
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 7
    resumed = cli("killed", f"ckpt_path={last}")  # (into its own folder: a resume of that run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metrics(tmp_path / "killed")["global_step"] == 20


class FullDisk:
    """A temporary file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, data):
        if self.room < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    """torch.save reports the lack of space as its own RuntimeError ("unexpected pos ..."): the
    OSError behind it must still be found."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(1000)}}, path)
    real = tempfile.NamedTemporaryFile
    monkeypatch.setattr("vaelab.files.tempfile.NamedTemporaryFile", lambda *a, **k: FullDisk(real(*a, **k), 2000))
    with pytest.raises(DiskFullError, match=rf"^no space left on device while writing {path} \(.* MB free there\); "
                                            r"the previous last.ckpt is intact: free some space"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(1000)}}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_a_run_on_a_full_file_system_stops_with_one_line(tmp_path):
    """A 20 MB tmpfs holds the first two checkpoints (7.9 MB each) but not the third. Before: a
    RuntimeError traceback ("[enforce fail at inline_container.cc:672] . unexpected pos")."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        result = run_cli("vaelab.train", [*FAST, f"hydra.run.dir={disk / 'run'}"], tmp_path)
        assert result.returncode == 2
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("vaelab: error:")]
        assert line.startswith(f"vaelab: error: no space left on device while writing {disk / 'run' / 'checkpoints'}/")
        assert "Traceback" not in result.stderr
        for kept in (disk / "run" / "checkpoints").glob("*.ckpt"):
            assert torch.load(kept, weights_only=False)["global_step"] == 5
    finally:
        subprocess.run(["umount", str(disk)])
