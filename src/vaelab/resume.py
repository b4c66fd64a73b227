"""Resuming a training run: the checkpoint is read and its settings compared with the new
ones before any data is loaded.

A checkpoint carries the resolved config it was trained with (``hyper_parameters.config``).
Resuming rebuilds the model from the new config and then loads the checkpoint's weights,
optimizer state, data position and random state, so a setting that differs would be silently
half-applied: the optimizer's learning rate, for one, comes back from the checkpoint while
``.hydra/config.yaml`` records the new value. ``compare`` sorts every differing key:

- ``free``: settings a resumed run may change and which simply apply (the trainer's limits and
  devices, logging, callbacks, where the data lives, the evaluation after training and its
  settings), and keys the checkpoint's config does not have at all (settings added by a later
  vaelab than the checkpoint's);
- ``optimizer``: ``optimizer.*`` values, applied to the restored optimizer and logged
  (``OptimizerOverrides``; a new learning rate scales the current one, so a schedule goes on);
- ``refused``: everything else (model, data, objective, seed, scheduler, ...): the run stops
  with one line listing them.

A requeued SLURM job (``SLURM_RESTART_COUNT`` >= 1) started without ``ckpt_path`` resumes from the
newest checkpoint in its run folder: its own ``last.ckpt`` or Lightning's ``hpc_ckpt_<n>.ckpt``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vaelab.callbacks.callback import Callback
from vaelab.checkpoints import read as read_checkpoint
from vaelab.errors import ConfigError, VaelabError, instantiate

log = logging.getLogger("vaelab")

# settings that may differ in a resumed run (a key, or every key below it)
FREE = (
    "ckpt_path", "test", "task_name", "optimized_metric", "eval", "paths", "logger", "callbacks", "hydra",
    "compile", "compile_mode", "cuda_graph",
    "sampler", "domain_classifier", "sample_quality", "completion", "representation", "disentanglement",
    "data.root", "data.mirror", "data.extra_mirrors", "data.download", "data.verify", "data.num_workers",
    "data.pin_memory", "data.on_device", "data.eval_batch_size",
    "trainer",
)
# ... except these, which change what a step or the data is
NOT_FREE = ("trainer._target_", "trainer.accumulate_grad_batches", "trainer.overfit_batches")
# optimizer keys that name the optimizer rather than set it
OPTIMIZER_IDENTITY = ("optimizer._target_", "optimizer._partial_")
ABSENT = "<absent>"


@dataclass
class ConfigChanges:
    """Differing keys (dotted) -> (checkpoint's value, new value), sorted by what a resume does with them."""

    free: dict[str, tuple] = field(default_factory=dict)
    optimizer: dict[str, tuple] = field(default_factory=dict)
    refused: dict[str, tuple] = field(default_factory=dict)


def flatten(tree, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return flat


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def compare(saved: dict, new: dict) -> ConfigChanges:
    """Sort the keys whose values differ between the checkpoint's config and the new one."""
    old, now = flatten(saved), flatten(new)
    changes = ConfigChanges()
    for key in sorted(set(old) | set(now)):
        pair = (old.get(key, ABSENT), now.get(key, ABSENT))
        if pair[0] == pair[1]:
            continue
        new_setting = pair[0] is ABSENT and not key.startswith("optimizer.")  # (unknown to the checkpoint's vaelab)
        if (_under(key, FREE) and not _under(key, NOT_FREE)) or new_setting:
            changes.free[key] = pair
        elif key.startswith("optimizer.") and not _under(key, OPTIMIZER_IDENTITY) and pair[1] is not ABSENT:
            changes.optimizer[key] = pair
        else:
            changes.refused[key] = pair
    return changes


def requeued_checkpoint(run_dir: Path) -> str | None:
    """In a requeued SLURM job: the newest checkpoint in its run folder, if any."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    found = [p for p in Path(run_dir).rglob("*.ckpt") if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None


def _describe(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{key} ({a} -> {b})" for key, (a, b) in changes.items())


def prepare(cfg: DictConfig) -> tuple[str | None, list[L.Callback]]:
    """(checkpoint to resume from or None, callbacks the resumed run needs). Raises VaelabError
    for a missing, truncated or foreign checkpoint, or settings a resume cannot change."""
    path = cfg.get("ckpt_path") or requeued_checkpoint(Path(cfg.paths.output_dir))
    if not path:
        return None, []
    checkpoint = read_checkpoint(path, "ckpt_path")
    if "loops" not in checkpoint or "optimizer_states" not in checkpoint:
        raise VaelabError(f"ckpt_path={path} holds weights only (no training state to resume): "
                          "start a new run, or evaluate it with python -m vaelab.eval")
    changes = compare(checkpoint["hyper_parameters"]["config"], OmegaConf.to_container(cfg, resolve=True))
    if changes.refused:
        raise ConfigError(
            f"ckpt_path={path} was trained with other settings, which a resume cannot change: "
            f"{_describe(changes.refused)}. Drop these overrides to resume, or start a new run without ckpt_path "
            "(a resume may change the trainer's limits and devices, logging, callbacks, data locations and optimizer.*)"
        )
    shown = {k: v for k, v in changes.free.items() if k.startswith(("trainer.", "eval.", "test", "data.", "compile"))}
    if shown:
        log.info("resuming %s with changed settings: %s", path, _describe(shown))
    if not changes.optimizer:
        return str(path), []
    _check_optimizer_keys(cfg, changes.optimizer)
    return str(path), [OptimizerOverrides(changes.optimizer)]


def _check_optimizer_keys(cfg: DictConfig, changes: dict[str, tuple]) -> None:
    """Every changed optimizer.* key must be a setting of the optimizer's parameter groups."""
    probe = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    unknown = [key for key in changes if key.removeprefix("optimizer.") not in probe.param_groups[0]]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} cannot be changed on resume (not a setting of the restored "
                          f"{type(probe).__name__}): drop it, or start a new run without ckpt_path")


class OptimizerOverrides(Callback):
    """Applies changed ``optimizer.*`` settings to the optimizer restored from the checkpoint,
    which would otherwise keep the checkpoint's values. A new ``lr`` multiplies the current
    learning rate (and the schedulers' base rates) by new / old, so a schedule in progress goes
    on from where it was, scaled (from an old rate of 0 it is set as given); other settings are
    set as given."""

    def __init__(self, changes: dict[str, tuple]):
        self.changes = {key.removeprefix("optimizer."): pair for key, pair in changes.items()}
        old, new = self.changes.get("lr", (ABSENT, None))
        # (from a rate of 0, or one the old config did not give, there is nothing to scale: set it)
        self.lr_ratio = new / old if isinstance(old, (int, float)) and old > 0 else None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            for name, (_, new) in self.changes.items():
                for group in optimizer.param_groups:
                    if name == "lr" and self.lr_ratio is not None:
                        for key in ("lr", "initial_lr"):
                            if key in group:
                                group[key] *= self.lr_ratio
                    else:
                        group[name] = new
        if self.lr_ratio is not None:
            for config in trainer.lr_scheduler_configs:
                if hasattr(config.scheduler, "base_lrs"):
                    config.scheduler.base_lrs = [lr * self.lr_ratio for lr in config.scheduler.base_lrs]
        applied = {f"optimizer.{key}": pair for key, pair in self.changes.items()}
        log.info("applied to the restored optimizer: %s", _describe(applied))
