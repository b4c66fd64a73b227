"""A Hydra callback that reports, at the end of a multirun, which jobs finished and which failed,
and makes the sweep's exit status 1 when any did not finish (the other jobs still ran), so that
scripts and CI see it."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vaelab.summarize import read_jobs

log = logging.getLogger("vaelab")


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        # the sweep folder's interpolations need the Hydra config; ${now:} is cached on this config
        # object, so it resolves to the folder the sweeper made
        HydraConfig.instance().set_config(config)
        sweep = Path(config.hydra.sweep.dir)
        jobs = read_jobs(sweep)
        bad = [job for job in jobs if job.status != "done"]
        lines = [f"sweep {sweep}: {len(jobs) - len(bad)} of {len(jobs)} jobs done"]
        lines += [f"  job {job.name} {job.status}: {job.error}" for job in bad]
        lines.append(f"table and plots: vaelab-summarize {sweep}")
        for line in lines:
            (log.error if bad and line.startswith("  ") else log.info)(line)
        if bad:
            raise SystemExit(1)  # (an Exception would only become a warning in Hydra's callback loop)
