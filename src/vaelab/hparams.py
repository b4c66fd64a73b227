"""What a run's row in TensorBoard's HPARAMS tab shows: its name, its columns and which of them
tell it apart from the runs beside it, all from the run's Hydra context (its config-group choices,
its command-line overrides and, for a sweep job, what the sweep varies).

Settings that only say where files are (``data.root``, ``data.mirror``, ``paths.*``,
``ckpt_path``, ...) cannot change a result: they are never columns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

LOCATION = re.compile(r"^paths\.|(^|\.)(root|mirror|\w*path|\w*_dir)$")


def overrides() -> list[tuple[str, str]]:
    """The run's command-line overrides as (key, value as typed), without deletions and file locations."""
    if not HydraConfig.initialized():
        return []
    pairs = [o.lstrip("+").split("=", 1) for o in HydraConfig.get().overrides.task]
    return [(key, value) for key, value in (p for p in pairs if len(p) == 2)
            if not key.startswith("~") and not LOCATION.search(key)]


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweeps(run_dir: Path) -> dict[str, object]:
    """{key: its sweep} for the keys a Hydra multirun varies (``run_dir``: one of its jobs): those
    given several values on its command line (recorded in ``<sweep>/multirun.yaml``) and those of
    its sweeper's search space (``hydra.sweeper.params``, e.g. Optuna's); each sweep as Hydra's
    override grammar reads it (``ChoiceSweep``, ``RangeSweep``, ``IntervalSweep``). Empty for a
    single run."""
    if not _multirun():
        return {}
    recorded = run_dir.parent / "multirun.yaml"
    task = list(OmegaConf.load(recorded).hydra.overrides.task) if recorded.is_file() else []
    params = [f"{key}={value}" for key, value in (HydraConfig.get().sweeper.get("params") or {}).items()]
    return {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(task + params)
            if o.is_sweep_override()}


def _takes_fractions(sweep) -> bool:
    """Whether a sweep has a value that is not an integer (``1,4`` has none; ``0.5,4`` and ``interval(1,8)`` have)."""
    values = getattr(sweep, "list", None) or [getattr(sweep, name, None) for name in ("start", "stop", "end", "step")]
    return any(isinstance(value, float) for value in values)


def varied(run_dir: Path) -> list[tuple[str, str]]:
    """The overrides that tell this run apart: for a sweep job, those of the keys the sweep varies;
    for a single run, all of its overrides."""
    if not _multirun():
        return overrides()
    swept = sweeps(run_dir)
    return [(key, value) for key, value in overrides() if key in swept]


def columns(config: Mapping, keys: Sequence[str], run_dir: Path) -> dict[str, object]:
    """{name: value} of the run's overrides, then of ``keys``: config paths, where the name of a
    config group (``model``, ``objective``, ...) stands for the option chosen in it. Values keep
    their types, except that a swept setting whose sweep has fractions is a float in every job
    (``objective.beta=0.5,4``: 4.0, not 4), so that a column has one type across a sweep. A
    setting that is absent (``objective.beta`` of ``objective=iwae``) is left out; a list or a
    config becomes its text."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    fractional = {key for key, sweep in sweeps(run_dir).items() if _takes_fractions(sweep)}
    tree = OmegaConf.create(dict(config))
    found = {}
    for key in [*(k for k, _ in overrides()), *keys]:
        value = choices[key] if key in choices else OmegaConf.select(tree, key, default=None)
        if OmegaConf.is_config(value):
            value = str(OmegaConf.to_container(value))
        elif isinstance(value, int) and not isinstance(value, bool) and key in fractional:
            value = float(value)
        if value is not None:
            found.setdefault(key, value)
    return found


def trial_name(run_dir: Path) -> str:
    """The name of the run's row: what tells it apart first (``varied``, each key by its last part:
    ``beta=4 latent_dim=10``, as TensorBoard cuts long names), then its folder (``<sweep>/<job>``
    for a sweep job), which keeps runs with the same overrides apart."""
    folder = f"{run_dir.parent.name}/{run_dir.name}" if _multirun() else run_dir.name
    short = " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in varied(run_dir))
    return f"{short} · {folder}" if short else folder
