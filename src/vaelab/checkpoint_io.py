"""Checkpoints written atomically (temporary file beside the destination, then renamed), and
only when every parameter and optimizer value in them is finite.

Lightning's own writer stages a local checkpoint in the system temporary folder and moves it
into place, which is a copy (not atomic) whenever that folder is on another file system; a
kill during the copy would leave a half-written ``last.ckpt``. Here the rename is always
within one folder, so a checkpoint is either the old one or the complete new one.

A state holding a NaN or an infinity (in the weights, the buffers such as the epoch's running
sums, or the optimizer's moments) is never written: the run stops with one line naming the
tensors and the last checkpoint this writer verified, so "the last good checkpoint" is always
one that loads into a working model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vaelab.errors import TrainingStopped
from vaelab.files import atomic_file


def floating_tensors(tree, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every floating-point tensor in nested dicts and lists."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() or tree.is_complex():
            yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from floating_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def non_finite(checkpoint: dict) -> list[str]:
    """Names of the model and optimizer tensors of a checkpoint holding a NaN or an infinity
    (one device synchronization per device for all of them)."""
    named = [*floating_tensors(checkpoint.get("state_dict", {}), "state_dict"),
             *floating_tensors(checkpoint.get("optimizer_states", []), "optimizer_states")]
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in named:
        by_device.setdefault(t.device, []).append((name, torch.isfinite(t).all()))
    bad = []
    for pairs in by_device.values():
        finite = torch.stack([flag for _, flag in pairs]).tolist()
        bad += [name for (name, _), ok in zip(pairs, finite, strict=True) if not ok]
    return bad


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.last_good: tuple[str, int | None] | None = None  # (path, step) of the newest verified checkpoint

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        bad = non_finite(checkpoint)
        if bad:
            names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingStopped(
                f"the training state at step {checkpoint.get('global_step')} holds NaN or infinite values ({names}); "
                f"training stopped without writing {path}. Last good checkpoint: {self.describe_last_good()}. "
                "Try a lower optimizer.lr, trainer.gradient_clip_val=1.0, or trainer.precision=32-true"
            )
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
        self.last_good = (str(Path(path)), checkpoint.get("global_step"))

    def describe_last_good(self) -> str:
        return f"{self.last_good[0]} (step {self.last_good[1]})" if self.last_good else "none was written by this run"


def last_good_checkpoint(trainer) -> str:
    """The newest checkpoint this run's AtomicCheckpointIO verified and wrote, for error messages."""
    io = getattr(trainer.strategy, "checkpoint_io", None)
    if isinstance(io, AtomicCheckpointIO):
        return io.describe_last_good()
    return "unknown (trainer.plugins has no AtomicCheckpointIO)"
