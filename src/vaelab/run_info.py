"""What a run records about itself so that it can be rerun: code version, library versions,
device, seed and the command-line overrides (``run_info.json`` in the run folder)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

import vaelab
from vaelab.files import write_json_atomic


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``folder``, or (None, None) outside one."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None


def collect(cfg: DictConfig) -> dict:
    commit, dirty = git_state(Path(vaelab.__file__).parent)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else (platform.processor() or "cpu")
    return {
        "vaelab_version": vaelab.__version__, "git_commit": commit, "git_dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__, "lightning": L.__version__,
        "device": device, "accelerator": cfg.trainer.get("accelerator"), "seed": cfg.get("seed"),
        "overrides": overrides, "argv": sys.argv, "pid": os.getpid(),
    }


@rank_zero_only
def write(cfg: DictConfig, output_dir: str | Path) -> None:
    write_json_atomic(Path(output_dir) / "run_info.json", collect(cfg))
