"""The CUDA availability probe, without its failing NVML look-up on machines that lack NVML."""

from __future__ import annotations

import ctypes
import os

NVML_SETTING = "PYTORCH_NVML_BASED_CUDA_CHECK"


def skip_failing_nvml_probe() -> bool:
    """Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import, so that asking whether CUDA is
    available does not initialize it; torch then opens the NVIDIA management library (NVML) at
    every ``torch.cuda.is_available()``, which Adam's step asks once per step. Where the library
    is absent (a CPU machine with torch's CUDA build, as pip installs it on Linux) that fails each
    time (0.36 ms on the reference CPU, about 5% of a step of the default MLP) and torch falls back
    to asking the CUDA runtime, which is what it asks with the setting off. So there, and only
    there, the setting is turned off: same answers, without the failing look-up. Returns whether
    it was."""
    if os.environ.get(NVML_SETTING) != "1":
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # (torch's own look-up)
    except OSError:
        os.environ[NVML_SETTING] = "0"
        return True
    return False
