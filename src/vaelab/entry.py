"""What every command-line entry point shares: building lists of callbacks and loggers from
config, and the wrapper that turns user errors into one line and survives failures in a multirun."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from vaelab.errors import VaelabError, instantiate

log = logging.getLogger("vaelab")


def instantiate_each(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``."""
    return [instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def pin_run_dir() -> None:
    """Make ``hydra.run.dir`` this process's resolved output folder.

    Lightning's DDP launcher starts the other ranks with ``hydra.run.dir=<hydra.run.dir>``;
    unpinned, ``${now:...}`` would resolve again in each child and scatter the run over folders.
    """
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


def task_wrapper(task: Callable[[DictConfig], dict | None]) -> Callable[[DictConfig], dict | None]:
    """Run a task; a user error (bad config, missing data) becomes one line on stderr and exit
    status 2. In a multirun a failing job is logged and the sweep goes on with the next job."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        try:
            return task(cfg)
        except VaelabError as err:
            if _multirun():
                log.error("job failed: %s", err)
                return None
            print(f"vaelab: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception:
            if _multirun():
                log.exception("job failed")
                return None
            raise

    return wrapped
