"""``Callback``, the base of vaelab's Lightning callbacks: Lightning skips the per-step hooks that a
callback leaves alone."""

from __future__ import annotations

import lightning as L

# the hooks Lightning calls on every callback around each training step
PER_STEP_HOOKS = ("on_train_batch_start", "on_before_zero_grad", "on_before_backward", "on_after_backward",
                  "on_before_optimizer_step", "on_train_batch_end")


class Callback(L.Callback):
    """A Lightning callback whose per-step hooks that it does not override are ``None``.

    Lightning calls every callback's hook, overridden or not (an empty method of
    ``lightning.Callback``), five or six times a training step, each call with a look-up of the
    callback's ``state_key`` and a profiler context: for a dozen callbacks ~60 calls of empty
    methods a step, 1-2% of an MLP step on the reference CPU. It calls only hooks that are callable,
    so a subclass's per-step hooks that are still ``lightning.Callback``'s are set to ``None`` here
    (its other hooks, called a few times an epoch, are left alone)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook in PER_STEP_HOOKS:
            if getattr(cls, hook) is getattr(L.Callback, hook):
                setattr(cls, hook, None)
