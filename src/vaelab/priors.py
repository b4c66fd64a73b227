"""Priors p(z)."""

from __future__ import annotations

import torch

from vaelab.posteriors import LOG_2PI


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z**2 + LOG_2PI).sum(-1)
