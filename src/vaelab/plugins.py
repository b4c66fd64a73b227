"""Optional plugins: the Hydra sweeper and launchers and the experiment trackers are extras
(``pip install 'vaelab[optuna]'``, ``[slurm]``, ``[mlflow]``, ``[wandb]``), so that the base install
pulls none of them (hydra-optuna-sweeper pins a 2021 optuna).

Choosing one that is not installed (``hparams_search=optuna``, ``hydra/launcher=submitit_slurm``,
``logger=mlflow``, ...) stops with one line naming the pip command, before Hydra composes the config:
Hydra alone would report a missing config option ("Could not find 'hydra/sweeper/optuna'", the
plugin being what provides it), and Lightning a missing package, each with a traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Sequence

OPTUNA = ("hydra_plugins.hydra_optuna_sweeper", "pip install 'vaelab[optuna]'")
SUBMITIT = ("hydra_plugins.hydra_submitit_launcher", "pip install 'vaelab[slurm]'")
MLFLOW = ("mlflow", "pip install 'vaelab[mlflow]'")
# (config group, option) -> (the module it needs, the command that installs it)
PLUGINS = {
    ("hparams_search", "optuna"): OPTUNA,
    ("hydra/sweeper", "optuna"): OPTUNA,
    ("hydra/launcher", "submitit_slurm"): SUBMITIT,
    ("hydra/launcher", "submitit_local"): SUBMITIT,
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "pip install hydra-joblib-launcher"),
    ("logger", "mlflow"): MLFLOW,
    ("logger", "many"): MLFLOW,  # tensorboard and mlflow
    ("logger", "wandb"): ("wandb", "pip install 'vaelab[wandb]'"),
}


def choices(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """(group, option) of each config-group choice among command-line overrides, list and sweep
    values (``logger=[tensorboard,mlflow]``, ``-m logger=csv,wandb``) included; flags are skipped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import OverrideParseException

    parser, picked = OverridesParser.create(), []
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except OverrideParseException:  # Hydra reports a malformed override itself
            continue
        if override.is_delete():
            continue
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else value if isinstance(value, list) else [value]
        picked += [(override.key_or_group, str(v)) for v in values]
    return picked


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def missing(overrides: Sequence[str]) -> list[str]:
    """One sentence per chosen plugin that is not installed, with its pip command."""
    return [f"{group}={option} needs {PLUGINS[group, option][0]}, which is not installed: {PLUGINS[group, option][1]}"
            for group, option in dict.fromkeys(choices(overrides))
            if (group, option) in PLUGINS and not _installed(PLUGINS[group, option][0])]


def refuse_missing_plugins(main: Callable) -> Callable:
    """Wrap a ``hydra.main`` entry point: a chosen plugin that is not installed is one line and exit 2."""

    @functools.wraps(main)
    def checked(*args, **kwargs):
        problems = missing(sys.argv[1:])
        if problems:
            print(f"vaelab: error: {'; '.join(problems)}", file=sys.stderr)
            raise SystemExit(2)
        return main(*args, **kwargs)

    return checked
