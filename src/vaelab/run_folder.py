"""A run folder belongs to one live run, and a folder holding a run's results is never written
over except by a resume of that run.

The owner holds an exclusive ``flock`` on ``<folder>/.vaelab.lock`` for as long as it lives;
the operating system drops it when the process ends in any way (a crash, SIGKILL), so no
stale lock is ever left. The lock file records the owner (pid, host, start time, SLURM job),
which the refusal names. Results are everything but the records of a run that stopped before
training (``.hydra/``, ``run_info.json``, ``failed.json``, logs): checkpoints, ``metrics.json``,
TensorBoard and CSV logs. A resume of the run in the folder (``ckpt_path`` inside it, or the
same SLURM job started again after a requeue) may write into it.

The Hydra callback ``RunFolderGuard`` claims a single run's folder before Hydra writes
``.hydra/`` into it, and a sweep's folder for the whole sweep. Processes that a run starts
itself (DDP ranks > 0, which Lightning starts by re-running the command into rank 0's folder,
and SLURM tasks > 0) are part of that run and claim nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.fabric.utilities.rank_zero import _get_rank
from omegaconf import DictConfig, OmegaConf

from vaelab.errors import VaelabError, exit_if_refused

LOCK = ".vaelab.lock"
RECORDS = {LOCK, "run_info.json", "failed.json", "multirun.yaml"}  # what a run that never trained leaves


def holds_results(folder: Path) -> bool:
    """Whether the folder (or, for a sweep, any job folder in it) holds more than the records
    of runs that stopped before training."""
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and ".hydra" not in relative.parts and path.name not in RECORDS and path.suffix != ".log":
            return True
    return False


def read_owner(folder: Path) -> dict:
    try:
        return json.loads((folder / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def is_resume_of(folder: Path, ckpt_path: str | None, owner: dict) -> bool:
    """``ckpt_path`` lies in the folder, or this is the folder's SLURM job started again after a requeue."""
    if ckpt_path and Path(ckpt_path).resolve().is_relative_to(folder.resolve()):
        return True
    job = os.environ.get("SLURM_JOB_ID")
    return bool(job) and owner.get("slurm_job_id") == job and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def claim(folder: str | Path, ckpt_path: str | None = None) -> int:
    """Make this process the folder's owner; returns the lock's file descriptor (closing it
    releases the folder). Raises VaelabError naming a live owner, or a folder holding another
    run's results."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        owner = read_owner(folder)
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
        raise VaelabError(f"{folder} is in use by a running vaelab process ({who}): wait for it to end "
                          "or choose another folder (hydra.run.dir=... / hydra.sweep.dir=...)") from None
    owner = read_owner(folder)
    if holds_results(folder) and not is_resume_of(folder, ckpt_path, owner):
        os.close(fd)
        finished = (folder / "metrics.json").is_file()
        state = "a finished run (metrics.json)" if finished else "the results of an earlier run"
        raise VaelabError(f"{folder} holds {state}: choose another folder (hydra.run.dir=...), or resume that run "
                          f"with ckpt_path={folder}/checkpoints/last.ckpt")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


class RunFolderGuard(Callback):
    """Hydra callback: claims the run folder (or the sweep folder) before anything is written into it."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def _claim(self, folder_key: str, config: DictConfig, resumable: bool) -> None:
        if _get_rank() not in (None, 0):  # a process started by a run (DDP rank > 0): the run owns the folder
            return
        HydraConfig.instance().set_config(config)
        folder = os.path.abspath(str(OmegaConf.select(config, folder_key)))  # (resolves ${now:} once; Hydra reuses it)
        ckpt_path = OmegaConf.select(config, "ckpt_path", default=None) if resumable else None
        self._fd = exit_if_refused(claim, folder, ckpt_path)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        # only training resumes; vaelab.eval's ckpt_path is the checkpoint it evaluates
        self._claim("hydra.run.dir", config, resumable=OmegaConf.select(config, "hydra.job.config_name") == "train")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._claim("hydra.sweep.dir", config, resumable=False)

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._release()

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._release()
