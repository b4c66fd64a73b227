"""What every command-line entry point shares: building lists of callbacks and loggers from
config, and the wrapper that turns user errors into one line and survives failures in a multirun."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from vaelab.errors import ConfigError, instantiate, user_error
from vaelab.files import write_json_atomic

log = logging.getLogger("vaelab")


def instantiate_each(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``."""
    return [instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def refuse_ddp_in_multirun(trainer) -> None:
    """Lightning's DDP starts the other processes by re-running the command line, so inside a
    Hydra multirun each child would run the whole sweep again (Lightning #11300, #11617, Hydra #2070)."""
    external = getattr(getattr(trainer.strategy, "cluster_environment", None), "creates_processes_externally", False)
    if _multirun() and trainer.world_size > 1 and not external:  # (SLURM starts its processes itself)
        raise ConfigError(
            "multi-process training (trainer=ddp / ddp_sim) cannot run inside a Hydra multirun: run DDP jobs as "
            "single runs, sweep single-device jobs (optionally in parallel with hydra/launcher=joblib), or sweep "
            "multi-GPU jobs on a cluster with hydra/launcher=submitit_slurm"
        )


def pin_run_dir() -> None:
    """Make ``hydra.run.dir`` this process's resolved output folder.

    Lightning's DDP launcher starts the other ranks with ``hydra.run.dir=<hydra.run.dir>``;
    unpinned, ``${now:...}`` would resolve again in each child and scatter the run over folders.
    """
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


FAILURE_FILE = "failed.json"


def _record_failure(err: BaseException) -> None:
    """Leave ``failed.json`` in the job's folder, for the sweep report and ``vaelab.summarize``."""
    write_json_atomic(Path(HydraConfig.get().runtime.output_dir) / FAILURE_FILE,
                      {"error": str(err).splitlines()[0] if str(err) else "", "type": type(err).__name__})


def task_wrapper(task: Callable[[DictConfig], dict | None]) -> Callable[[DictConfig], dict | None]:
    """Run a task; a user error (bad config, missing data) becomes one line on stderr and exit
    status 2. In a multirun a failing job is logged, marked with ``failed.json`` in its folder,
    and the sweep goes on with the next job."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        try:
            return task(cfg)
        except Exception as err:
            user = user_error(err)
            if _multirun():
                if user is not None:
                    log.error("job failed: %s", user)
                else:
                    log.exception("job failed")
                _record_failure(user or err)
                return None
            if user is None:
                raise
            print(f"vaelab: error: {user}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
