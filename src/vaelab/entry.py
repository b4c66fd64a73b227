"""What every command-line entry point shares: building lists of callbacks and loggers from
config, and the wrapper that turns user errors into one line and survives failures in a multirun."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from vaelab.errors import ConfigError, VaelabError, instantiate
from vaelab.files import write_json_atomic

log = logging.getLogger("vaelab")


def quiet_library_noise() -> None:
    """Silence what the libraries print that tells a vaelab user nothing, precisely: Lightning's
    tip advertising its LitLogger, and the deprecation that torch raises inside Lightning's own
    code (``lightning.pytorch.utilities._pytree`` building a ``LeafSpec``), which no setting of
    vaelab's can avoid. Every other warning still shows."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_litlogger_tip)


def _not_litlogger_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip: For seamless cloud logging")


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
        quiet_library_noise()
        try:
            return task(cfg)
        except VaelabError as err:
            if _multirun():
                log.error("job failed: %s", err)
                _record_failure(err)
                return None
            print(f"vaelab: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception as err:
            if _multirun():
                log.exception("job failed")
                _record_failure(err)
                return None
            raise

    return wrapped
