"""The types and ranges of the config values, checked once at start-up.

A value given on the command line arrives as whatever YAML made of it (``objective.beta=abc``
is a string, ``data.batch_size=1.5`` a float); without this table it travels until some
constructor or tensor operation trips over it with a traceback, or worse does not. Each entry
maps a dotted key to a ``Rule``; a key absent from the composed config is skipped (another
model family, another scheduler), so one table serves every config group. To extend it, add
``"group.key": Int(min=1)`` and the like; the constructors behind ``_target_`` keep their own
checks of how values combine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

from vaelab.data.sources import DATASET_NAMES
from vaelab.errors import ConfigError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """A value's kind (``int``, ``number``, ``bool``, ``str``, ``choice``, ``int_list``) and range.
    ``min``/``max`` are inclusive, ``above``/``below`` exclusive."""

    kind: str
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple = ()
    pattern: str | None = None
    pattern_help: str = ""
    null: bool = False

    def range_text(self) -> str:
        bounds = ((">=", self.min), (">", self.above), ("<=", self.max), ("<", self.below))
        return " and ".join(f"{op} {_yaml(bound)}" for op, bound in bounds if bound is not None)

    def describe(self) -> str:
        text = {
            "int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
            "int_list": "a list of integers",
            "choice": "one of " + ", ".join(str(c) if isinstance(c, str) else _yaml(c) for c in self.choices),
        }[self.kind]
        if self.pattern_help:
            text = self.pattern_help
        if self.range_text():
            text += " " + self.range_text()
        return text + (" or null" if self.null else "")

    def has_kind(self, value) -> bool:
        if self.kind == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if self.kind == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)
        if self.kind == "int_list":
            return isinstance(value, (list, tuple)) and all(Rule("int").has_kind(v) for v in value)
        return any(value == c and type(value) is type(c) for c in self.choices)

    def in_range(self, value) -> bool:
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))

    def problem(self, key: str, value) -> str | None:
        """None when ``value`` fits, else the one-line message: the key, what it must be, the value."""
        if value is None:
            return None if self.null else f"{key} must be {self.describe()}, got null"
        if not self.has_kind(value):
            return f"{key} must be {self.describe()}, got {_yaml(value)}"
        if self.kind in ("int", "number") and not self.in_range(value):
            return f"{key} must be {self.range_text()}, got {_yaml(value)}"
        return None


def _yaml(value) -> str:
    """A value as it would be typed on the command line."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value) if isinstance(value, str) else str(value)


def Int(min=None, max=None, null=False) -> Rule:  # noqa: N802 (the table reads as types)
    return Rule("int", min=min, max=max, null=null)


def Number(min=None, max=None, above=None, below=None, null=False) -> Rule:  # noqa: N802
    return Rule("number", min=min, max=max, above=above, below=below, null=null)


def Bool(null=False) -> Rule:  # noqa: N802
    return Rule("bool", null=null)


def Text(null=False) -> Rule:  # noqa: N802
    return Rule("str", null=null)


def Choice(*choices, null=False) -> Rule:  # noqa: N802
    return Rule("choice", choices=choices, null=null)


def IntList() -> Rule:  # noqa: N802
    return Rule("int_list")


DURATION = Rule("str", pattern=r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", pattern_help="a duration DD:HH:MM:SS", null=True)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "64-true", "bf16-true", "16-true",
              32, 16, 64, "32", "16", "64", "bf16")

TRAINER = {
    "trainer.accelerator": Choice("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu"),
    "trainer.num_nodes": Int(min=1),
    "trainer.precision": Choice(*PRECISIONS),
    "trainer.max_epochs": Int(min=-1, null=True),
    "trainer.min_epochs": Int(min=0, null=True),
    "trainer.max_steps": Int(min=-1),
    "trainer.max_time": DURATION,
    "trainer.log_every_n_steps": Int(min=1),
    "trainer.check_val_every_n_epoch": Int(min=1, null=True),
    "trainer.num_sanity_val_steps": Int(min=-1),
    "trainer.limit_train_batches": Number(min=0, null=True),
    "trainer.limit_val_batches": Number(min=0, null=True),
    "trainer.limit_test_batches": Number(min=0, null=True),
    "trainer.overfit_batches": Number(min=0),
    "trainer.accumulate_grad_batches": Int(min=1),
    "trainer.gradient_clip_val": Number(min=0, null=True),
    "trainer.deterministic": Choice(True, False, "warn", null=True),
    "trainer.enable_progress_bar": Bool(null=True),
}

TRAIN: dict[str, Rule] = {
    "seed": Int(min=0, max=2**32 - 1, null=True),
    "compile": Choice(True, False, "auto"),
    "compile_mode": Choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", null=True),
    "cuda_graph": Bool(),
    "ckpt_path": Text(null=True),
    "sweep.jobs_per_gpu": Int(min=1),
    "test": Bool(),
    "optimized_metric": Text(null=True),
    "eval.iw_samples": Int(min=0),
    "eval.iw_chunk": Int(min=1),
    "data.name": Choice(*DATASET_NAMES, "folder", "array"),
    "data.root": Text(),
    "data.mirror": Text(null=True),
    "data.download": Bool(),
    "data.verify": Bool(),
    "data.val_size": Number(min=0),
    "data.test_size": Number(min=0, null=True),
    "data.split_seed": Int(),
    "data.batch_size": Int(min=1),
    "data.eval_batch_size": Int(min=1, null=True),
    "data.num_workers": Int(min=0),
    "data.pin_memory": Bool(),
    "data.on_device": Choice(True, False, "auto"),
    "data.seed": Int(min=0, max=2**32 - 1, null=True),
    "data.binarize": Choice("none", "static", "dynamic"),
    "data.binarize_seed": Int(),
    "data.exclude_classes": IntList(),
    "data.num_classes": Int(min=1),
    "data.labels_per_class": Int(min=1, null=True),
    "data.labels_seed": Int(),
    "data.labelled_batch_size": Int(min=1),
    "model.latent_dim": Int(min=1),
    "model.conditional": Bool(),
    "model.channels_last": Bool(),
    "model.posterior.steps": Int(min=1),
    "model.posterior.hidden": Int(min=1),
    "model.posterior.context": Int(min=0, null=True),
    "model.posterior.forget_bias": Number(),
    "model.prior.components": Int(min=1),
    "model.prior.init_scale": Number(min=0),
    "model.prior.init_logvar": Number(),
    "model.prior.init_mean": Number(),
    "model.prior.init_std": Number(min=0),
    "model.likelihood.scale": Number(above=0),
    "model.likelihood.learn_scale": Bool(),
    "model.likelihood.components": Int(min=1),
    "model.likelihood.min_log_scale": Number(),
    "model.likelihood.max_log_scale": Number(),
    "objective.beta": Number(min=0),
    "objective.alpha": Number(min=0),
    "objective.gamma": Number(min=0),
    "objective.k": Int(min=1),
    "objective.variant": Choice("i", "ii"),
    "objective.lambda_od": Number(min=0),
    "objective.lambda_d": Number(min=0),
    "kl_schedule.warmup_steps": Int(min=1),
    "kl_schedule.cycles": Int(min=1),
    "kl_schedule.ratio": Number(above=0, max=1),
    "kl_schedule.free_nats": Number(min=0),
    "kl_schedule.c_max": Number(min=0),
    "kl_schedule.anneal_steps": Int(min=1),
    "kl_schedule.gamma": Number(min=0),
    "optimizer.lr": Number(min=0),
    "optimizer.weight_decay": Number(min=0),
    "optimizer.fused": Bool(null=True),
    "scheduler.scheduler.T_max": Int(min=1),
    "scheduler.scheduler.factor": Number(above=0, below=1),
    "scheduler.scheduler.patience": Int(min=0),
    "callbacks.step_checkpoint.every_n_train_steps": Int(min=0),
    "callbacks.timed_checkpoint.minutes": Number(above=0),
    "callbacks.divergence.factor": Number(above=0),
    "callbacks.divergence.window": Int(min=1),
    **TRAINER,
}

EVAL: dict[str, Rule] = {
    "ckpt_path": Text(),
    "seed": Int(min=0, max=2**32 - 1),
    "data.root": Text(),
    "data.mirror": Text(null=True),
    "data.download": Bool(),
    "data.verify": Bool(),
    "data.eval_batch_size": Int(min=1),
    "eval.iw_samples": Int(min=0),
    "eval.iw_chunk": Int(min=1),
    "anomaly.ood_data": Choice(*DATASET_NAMES, null=True),
    "anomaly.holdout_class": Int(min=0, null=True),
    "num_samples": Int(min=1),
    "num_reconstructions": Int(min=1),
    "sample_class": Int(min=0, null=True),
    "sampler.components": Int(min=1),
    "sampler.covariance_type": Choice("full", "tied", "diag", "spherical"),
    "sampler.max_iter": Int(min=1),
    "sampler.reg_covar": Number(min=0),
    **TRAINER,
}


def validate(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Raise ConfigError with one line for the first value that does not fit its rule."""
    for key, rule in rules.items():
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            raise ConfigError(f"{key} is required: give {key}=<{rule.describe()}>") from None
        if value is _ABSENT:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        problem = rule.problem(key, value)
        if problem:
            raise ConfigError(problem)
