"""The direct optimizer step: ``loss.backward()`` and the torch optimizer's ``step()`` without
Lightning's strategy, precision and hook layers, for a run in which those layers would only call
hooks that nothing overrides.

Under manual optimization, Lightning's ``manual_backward`` and ``LightningOptimizer.step`` pass
through the strategy, the precision plugin and a closure, and call the callbacks' and the
module's ``on_before_backward``, ``on_after_backward`` and ``on_before_optimizer_step`` hooks:
~350 us a step, 4-5% of an MLP step on the reference CPU. On one device (no gradient
synchronisation), at a precision without loss scaling, and with none of those hooks overridden,
all that those layers do besides ``backward()`` and ``step()`` is count the step and open the
profiler's "optimizer_step" section, which ``step`` below still does."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

# what Lightning's backward and optimizer step call besides backward() and step()
HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
PRECISION_STEPS = ("pre_backward", "backward", "post_backward", "optimizer_step")


def steps_directly(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Whether Lightning's layers around backward() and step() would do nothing else for this run:
    a single-device strategy, a precision plugin that scales no loss, and no callback or module
    overriding a hook of the backward pass or the optimizer step (nor the module's ``backward``)."""
    precision = trainer.precision_plugin
    unscaled = (all(getattr(type(precision), name) is getattr(Precision, name) for name in PRECISION_STEPS)
                or (type(precision) is MixedPrecision and precision.scaler is None))
    listened = any(is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks for hook in HOOKS)
    listened |= any(is_overridden(hook, module, L.LightningModule) for hook in (*HOOKS, "backward"))
    return type(trainer.strategy) is SingleDeviceStrategy and unscaled and not listened


def step(optimizer: LightningOptimizer) -> None:
    """The torch optimizer's step, counted by Lightning's manual-optimization loop
    (``trainer.global_step``) and profiled as "optimizer_step", as ``LightningOptimizer.step`` does."""
    optimizer._on_before_step()
    optimizer.optimizer.step()
    optimizer._on_after_step()
