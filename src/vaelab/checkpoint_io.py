"""Checkpoints written atomically: to a temporary file beside the destination, then renamed.

Lightning's own writer stages a local checkpoint in the system temporary folder and moves it
into place, which is a copy (not atomic) whenever that folder is on another file system; a
kill during the copy would leave a half-written ``last.ckpt``. Here the rename is always
within one folder, so a checkpoint is either the old one or the complete new one.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vaelab.files import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
