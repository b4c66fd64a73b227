"""How the KL term enters the training loss over time (the ``kl_schedule`` config group).

Each schedule maps the batch-mean KL per latent dimension, kl_d (nats), and the optimizer step t
to the KL term of the loss; the objective multiplies it by beta. Validation and test always
report the plain KL, whatever the schedule.
"""

from __future__ import annotations

import torch

from vaelab.errors import ConfigError


class KLSchedule:
    """Base class; ``constant`` tells whether the KL term is the plain sum_d kl_d at every step,
    ``uses_step`` whether it depends on the step t (which a CUDA-graph step cannot follow)."""

    constant = False
    uses_step = False

    def setup(self, total_steps: int) -> None:
        """Told the run's number of optimizer steps before training starts."""

    def __call__(self, kl_per_dim: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def curves(self, step: int) -> dict[str, float]:
        """What the schedule does to the KL term at step t where that changes with t, by name, for the
        training curves (``schedule/<name>`` in the logs): ``kl_weight`` w(t), ``kl_capacity`` C(t)."""
        return {}


class Constant(KLSchedule):
    """sum_d kl_d at every step."""

    constant = True

    def __call__(self, kl_per_dim, step):
        return kl_per_dim.sum()


class LinearWarmup(KLSchedule):
    """min(1, t / warmup_steps) * sum_d kl_d (Bowman et al. 2016)."""

    uses_step = True

    def __init__(self, warmup_steps: int):
        if warmup_steps < 1:
            raise ConfigError(f"kl_schedule.warmup_steps must be >= 1, got {warmup_steps}")
        self.warmup_steps = warmup_steps

    def weight(self, step: int) -> float:
        return min(1.0, step / self.warmup_steps)

    def __call__(self, kl_per_dim, step):
        return self.weight(step) * kl_per_dim.sum()

    def curves(self, step):
        return {"kl_weight": self.weight(step)}


class Cyclical(KLSchedule):
    """Cyclical annealing (Fu et al. 2019): the T training steps form M cycles; in each, the weight
    rises linearly from 0 to 1 over the first fraction R of the cycle, then stays at 1."""

    uses_step = True

    def __init__(self, cycles: int = 4, ratio: float = 0.5):
        if cycles < 1 or not 0 < ratio <= 1:
            raise ConfigError(f"kl_schedule needs cycles >= 1 and 0 < ratio <= 1, got cycles={cycles}, ratio={ratio}")
        self.cycles, self.ratio = cycles, ratio
        self.cycle_steps = None

    def setup(self, total_steps):
        self.cycle_steps = max(1, total_steps) / self.cycles

    def weight(self, step: int) -> float:
        if self.cycle_steps is None:
            raise RuntimeError("Cyclical.setup(total_steps) must be called before training")
        position = (step % self.cycle_steps) / self.cycle_steps
        return min(1.0, position / self.ratio)

    def __call__(self, kl_per_dim, step):
        return self.weight(step) * kl_per_dim.sum()

    def curves(self, step):
        return {"kl_weight": self.weight(step)}


class FreeBits(KLSchedule):
    """sum_d max(lambda, kl_d) (Kingma et al. 2016): no gradient pushes a dimension below lambda nats."""

    def __init__(self, free_nats: float = 0.25):
        if free_nats < 0:
            raise ConfigError(f"kl_schedule.free_nats must be >= 0, got {free_nats}")
        self.free_nats = free_nats

    def __call__(self, kl_per_dim, step):
        return kl_per_dim.clamp(min=self.free_nats).sum()


class Capacity(KLSchedule):
    """gamma * |sum_d kl_d - C(t)|, C rising linearly from 0 to c_max over anneal_steps (Burgess et al. 2018)."""

    uses_step = True

    def __init__(self, c_max: float = 25.0, anneal_steps: int = 10000, gamma: float = 100.0):
        if c_max < 0 or anneal_steps < 1 or gamma < 0:
            raise ConfigError("kl_schedule needs c_max >= 0, anneal_steps >= 1 and gamma >= 0")
        self.c_max, self.anneal_steps, self.gamma = c_max, anneal_steps, gamma

    def capacity(self, step: int) -> float:
        return self.c_max * min(1.0, step / self.anneal_steps)

    def __call__(self, kl_per_dim, step):
        return self.gamma * (kl_per_dim.sum() - self.capacity(step)).abs()

    def curves(self, step):
        return {"kl_capacity": self.capacity(step)}
