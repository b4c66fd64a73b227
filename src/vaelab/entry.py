"""What every command-line entry point shares: building lists of callbacks and loggers from
config, the wrapper that turns user errors into one line (and ``failed.json``) and survives
failures in a multirun, and the config-group listing of ``--help``."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, read_write

from vaelab.errors import (
    ConfigError,
    DiskFullError,
    VaelabError,
    instantiate,
    user_error,
)
from vaelab.files import no_space_error, write_json_atomic
from vaelab.sweep_gpus import jobs_at_once

log = logging.getLogger("vaelab")


def quiet_library_noise() -> None:
    """Silence what the libraries print that tells a vaelab user nothing, precisely: Lightning's
    tip advertising its LitLogger; the deprecation that torch raises inside Lightning's own code
    (``lightning.pytorch.utilities._pytree`` building a ``LeafSpec``), which no setting of
    vaelab's can avoid; and ModelCheckpoint's 13-line advice, at every step checkpoint of a run
    under manual optimization (vaelab's default), to keep the weights from before the step: the
    step checkpoint holds the state after step N, as under automatic optimization, which is what
    a resume at step N needs. Every other warning still shows."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps",
                            category=UserWarning, module=r"lightning\.pytorch\.callbacks\.model_checkpoint")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_litlogger_tip)


def _not_litlogger_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip: For seamless cloud logging")


def instantiate_each(group: DictConfig | None) -> list:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``."""
    return [instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def instantiate_callbacks(cfg: DictConfig) -> list:
    """The ``callbacks`` group's callbacks, its progress bar only with ``trainer.enable_progress_bar``
    on (Lightning refuses a progress bar callback on a trainer told to show none)."""
    callbacks = instantiate_each(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [callback for callback in callbacks if not isinstance(callback, ProgressBar)]
    return callbacks


def accepted_groups(config_name: str) -> str:
    """``--help``'s list of config groups: those in the command's primary config (its defaults
    list: ``sampler`` for eval, not for train), with the options a user can choose (not the
    building blocks whose names start with ``_``, such as ``data/_base``)."""
    if not GlobalHydra.instance().is_initialized():
        return ""
    loader = GlobalHydra.instance().config_loader()
    source = next((s for s in loader.get_sources() if s.is_config(config_name)), None)
    defaults = OmegaConf.to_container(source.load_config(config_name).config).get("defaults", []) if source else []
    groups = sorted({next(iter(entry)).split()[-1].lstrip("/") for entry in defaults if isinstance(entry, dict)}
                    - {"hydra"})
    options = {group: sorted(o for o in loader.get_group_options(group) if not o.startswith("_")) for group in groups}
    return "\n".join(f"{group}: {', '.join(choices)}" for group, choices in options.items())


OmegaConf.register_new_resolver("vaelab_config_groups", accepted_groups, replace=True)
OmegaConf.register_new_resolver("vaelab_jobs_at_once", jobs_at_once, replace=True)


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
    """Leave ``failed.json`` with the error in the run's folder (for the user, the sweep report and
    ``vaelab.summarize``), when the folder can still be written."""
    try:
        write_json_atomic(Path(HydraConfig.get().runtime.output_dir) / FAILURE_FILE,
                          {"error": str(err).splitlines()[0] if str(err) else "", "type": type(err).__name__})
    except (OSError, VaelabError, ValueError):  # a full disk, no Hydra run
        pass


def shown_error(err: Exception) -> VaelabError | None:
    """The one-line error to show for ``err`` (a VaelabError, also behind Hydra's and OmegaConf's
    wrappers, or a full disk), or None for a bug (shown with its traceback)."""
    found = user_error(err)
    if found is not None:
        return found
    no_space = no_space_error(err)
    if no_space is not None:
        return DiskFullError(f"no space left on device while writing {no_space.filename or 'a run file'}: "
                             "free some space (or point paths.log_dir at a larger disk) and resume")
    return None


def task_wrapper(task: Callable[[DictConfig], dict | None]) -> Callable[[DictConfig], dict | None]:
    """Run a task; a user error (bad config, missing data, a full disk) becomes one line on stderr
    and exit status 2, and ``failed.json`` in the run folder. In a multirun a failing job is
    logged, marked with ``failed.json``, and the sweep goes on with the next job. A run stopped by
    SIGTERM exits with status 143 (or the callbacks' ``StopOnSignal`` status), never 0."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        quiet_library_noise()
        try:
            return task(cfg)
        except SIGTERMException as stop:  # (Lightning's carries no status: the process would exit 0, "success")
            stop.code = stop.code or 128 + signal.SIGTERM
            raise
        except Exception as err:
            shown = shown_error(err)
            _record_failure(shown or err)
            if _multirun():
                if shown is not None:
                    log.error("job failed: %s", shown)
                else:
                    log.exception("job failed")
                return None
            if shown is None:
                raise
            print(f"vaelab: error: {shown}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
