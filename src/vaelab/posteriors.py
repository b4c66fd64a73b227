"""Approximate posteriors q(z|x).

``DiagonalGaussian`` is the encoder's Gaussian q0(z|x). The posterior families below turn noise
into samples and their densities, all with one interface:

    context_dim   extra encoder outputs per image the family needs (the encoder emits
                  [B, 2*D + context_dim]: mu, raw logvar of q0, then the context);
    closed_form   True only where KL(q || N(0, I)) has a closed form (the Gaussian);
    forward(base, context [B, context_dim], eps [S, B, D]) -> z [S, B, D], log q(z|x) [S, B],

with z0 = base.sample_from_noise(eps) and log q(z_K|x) = log q0(z0|x) - sum_k log|det dz_k/dz_{k-1}|.
"""

from __future__ import annotations

import math

import torch

from vaelab.errors import check_integer

LOG_2PI = math.log(2 * math.pi)


def bound_logvar(raw: torch.Tensor, low: float = -12.0, high: float = 8.0) -> torch.Tensor:
    """Squash a raw log-variance smoothly into [low, high]: centre + half * tanh((raw - centre) / half).

    Near the centre it is almost the identity; it keeps exp() from overflowing and the
    variance from reaching zero (where log q and the KL would be infinite)."""
    half, centre = (high - low) / 2, (high + low) / 2
    return centre + half * torch.tanh((raw - centre) / half)


class DiagonalGaussian:
    """q(z|x) = N(z; mu, diag(exp(logvar))), mu and logvar of shape [B, D]."""

    LOGVAR_MIN = -12.0
    LOGVAR_MAX = 8.0

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu = mu
        self.logvar = logvar

    @classmethod
    def from_encoder_output(cls, h: torch.Tensor) -> DiagonalGaussian:
        """Split an encoder output [B, 2*D] into mu and a bounded log-variance."""
        mu, raw_logvar = h.chunk(2, dim=-1)
        return cls(mu, bound_logvar(raw_logvar, cls.LOGVAR_MIN, cls.LOGVAR_MAX))

    @property
    def mean(self) -> torch.Tensor:
        """E[z|x] = mu."""
        return self.mu

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, num_samples: int | None = None) -> torch.Tensor:
        """Reparameterized sample z = mu + sigma * eps, eps ~ N(0, I): [B, D], or [S, B, D]."""
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        return self.sample_from_noise(torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype))

    def sample_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        return self.mu + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) summed over latent dimensions; z [..., B, D] -> [..., B]."""
        return -0.5 * (((z - self.mu) ** 2) / self.logvar.exp() + self.logvar + LOG_2PI).sum(-1)

    def kl_standard_normal_per_dim(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension: 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2), [B, D]."""
        return 0.5 * (self.mu**2 + self.logvar.exp() - 1.0 - self.logvar)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent dimensions: [B]."""
        return self.kl_standard_normal_per_dim().sum(-1)


def _check_context(posterior: torch.nn.Module, context: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The encoder's extra outputs [B, context_dim] (an empty [B, 0] where the family needs none)."""
    need = posterior.context_dim
    if context is None:
        if need:
            raise ValueError(f"{type(posterior).__name__} needs a context of {need} encoder outputs per image, got None")
        return torch.zeros(batch, 0)
    if context.shape[-1] != need:
        raise ValueError(
            f"{type(posterior).__name__} needs {need} context features per image from the encoder, got {context.shape[-1]}"
        )
    return context


class GaussianPosterior(torch.nn.Module):
    """q(z|x) = q0(z|x), the encoder's diagonal Gaussian itself: z = mu + sigma * eps."""

    context_dim = 0
    closed_form = True

    def forward(
        self, base: DiagonalGaussian, context: torch.Tensor | None, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """eps [S, B, D] -> z [S, B, D], log q(z|x) [S, B]."""
        z = base.sample_from_noise(eps)
        return z, base.log_prob(z)


class MaskedLinear(torch.nn.Linear):
    """A linear layer whose weight is multiplied elementwise by a fixed 0/1 mask [out, in]."""

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(torch.nn.Module):
    """Masked autoregressive net (Germain et al. 2015): (z [.., D], h [.., C]) -> (m, s) [.., D] each.

    Each latent dimension j has a degree order[j] in 1..D; each hidden unit a degree in 0..D-1.
    A hidden unit of degree k sees the inputs of degree <= k (degree 0: none, the context only),
    and output j sees the hidden units of degree < order[j], so m_j and s_j depend only on the
    z_i with order[i] < order[j], and on h (which does not depend on z), for every j."""

    def __init__(self, latent_dim: int, hidden: int, context: int, order: torch.Tensor, layers: int = 2):
        super().__init__()
        self.register_buffer("order", order.clone())
        hidden_degree = torch.arange(hidden) % latent_dim
        self.first = MaskedLinear(hidden_degree[:, None] >= order[None, :])
        self.context = torch.nn.Linear(context, hidden, bias=False) if context else None
        self.middle = torch.nn.ModuleList(
            MaskedLinear(hidden_degree[:, None] >= hidden_degree[None, :]) for _ in range(layers - 1)
        )
        out_mask = order[:, None] > hidden_degree[None, :]
        self.out = MaskedLinear(torch.cat([out_mask, out_mask]))

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.first(z)
        if self.context is not None:
            a = a + self.context(h)
        a = torch.nn.functional.elu(a)
        for layer in self.middle:
            a = torch.nn.functional.elu(layer(a))
        m, s = self.out(a).chunk(2, dim=-1)
        return m, s


class IAFStep(torch.nn.Module):
    """One step of inverse autoregressive flow (Kingma et al. 2016, eq. 11-14):

        (m, s) = MADE(z, h),  sigma = sigmoid(s + forget_bias),  z' = sigma * z + (1 - sigma) * m,

    whose Jacobian dz'/dz is triangular with diagonal sigma, so log|det| = sum_d log sigma_d.
    The forget-gate bias (+1 to +2) starts sigma near 1, the step near the identity."""

    def __init__(self, latent_dim: int, hidden: int, context: int, order: torch.Tensor, forget_bias: float = 1.0):
        super().__init__()
        self.made = MADE(latent_dim, hidden, context, order)
        self.forget_bias = forget_bias

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z [S, B, D], h [B, C] -> z' [S, B, D], log|det dz'/dz| [S, B]."""
        m, s = self.made(z, h.expand(*z.shape[:-1], h.shape[-1]))
        gate = s + self.forget_bias
        sigma = torch.sigmoid(gate)
        return sigma * z + (1 - sigma) * m, torch.nn.functional.logsigmoid(gate).sum(-1)


class IAFPosterior(torch.nn.Module):
    """Inverse autoregressive flow posterior (Kingma et al. 2016): z0 ~ q0(z|x), then K steps
    z_k = sigma_k * z_{k-1} + (1 - sigma_k) * m_k with (m_k, sigma_k) autoregressive in z_{k-1}
    and conditioned on a context h(x) of ``context`` encoder outputs;

        log q(z_K|x) = log q0(z0|x) - sum_k sum_d log sigma_{k,d}.

    The order of the dimensions is reversed from one step to the next, so that the flow as a
    whole is not triangular."""

    closed_form = False

    def __init__(
        self, latent_dim: int, steps: int = 2, hidden: int = 256, context: int | None = None, forget_bias: float = 1.0
    ):
        super().__init__()
        check_integer("model.posterior.latent_dim", latent_dim)
        check_integer("model.posterior.steps", steps)
        check_integer("model.posterior.hidden", hidden)
        context = 2 * latent_dim if context is None else context
        check_integer("model.posterior.context", context, minimum=0)
        self.latent_dim = latent_dim
        self.context_dim = int(context)
        order = torch.arange(1, latent_dim + 1)
        self.flow = torch.nn.ModuleList(
            IAFStep(latent_dim, hidden, self.context_dim, order if k % 2 == 0 else order.flip(0), forget_bias)
            for k in range(steps)
        )

    def forward(
        self, base: DiagonalGaussian, context: torch.Tensor | None, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """eps [S, B, D] -> z_K [S, B, D], log q(z_K|x) [S, B]."""
        h = _check_context(self, context, eps.shape[-2]).to(eps)
        z = base.sample_from_noise(eps)
        log_q = base.log_prob(z)
        for step in self.flow:
            z, log_det = step(z, h)
            log_q = log_q - log_det
        return z, log_q


def planar_u_hat(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """u constrained so that the planar map is invertible (Rezende & Mohamed 2015, appendix A.1):

        u_hat = u + (m(w.u) - w.u) w / |w|^2,  m(a) = -1 + softplus(a),

    so that w.u_hat = m(w.u) > -1."""
    wu = (w * u).sum(-1, keepdim=True)
    m = torch.nn.functional.softplus(wu) - 1
    return u + (m - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)


class PlanarPosterior(torch.nn.Module):
    """Amortized planar flow posterior (Rezende & Mohamed 2015; amortized as in van den Berg et
    al. 2018): z0 ~ q0(z|x), then K steps, each with u, w [D] and b [1] from the encoder,

        z_k = z_{k-1} + u_hat tanh(w.z_{k-1} + b),
        log|det dz_k/dz_{k-1}| = log|1 + u_hat.psi|,  psi = (1 - tanh^2(w.z_{k-1} + b)) w,

    with u_hat from ``planar_u_hat`` (invertible map). The context is [B, K * (2D + 1)]: step k
    reads u, w, b from its k-th slice of 2D + 1 numbers."""

    closed_form = False

    def __init__(self, latent_dim: int, steps: int = 8):
        super().__init__()
        check_integer("model.posterior.latent_dim", latent_dim)
        check_integer("model.posterior.steps", steps)
        self.latent_dim = latent_dim
        self.num_steps = steps
        self.context_dim = steps * (2 * latent_dim + 1)

    def step_parameters(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """context [B, K * (2D + 1)] -> per step (u_hat [B, D], w [B, D], b [B, 1])."""
        d = self.latent_dim
        out = []
        for chunk in context.split(2 * d + 1, dim=-1):
            u, w, b = chunk[..., :d], chunk[..., d : 2 * d], chunk[..., 2 * d :]
            out.append((planar_u_hat(u, w), w, b))
        return out

    def forward(
        self, base: DiagonalGaussian, context: torch.Tensor | None, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """eps [S, B, D] -> z_K [S, B, D], log q(z_K|x) [S, B]."""
        context = _check_context(self, context, eps.shape[-2])
        z = base.sample_from_noise(eps)
        log_q = base.log_prob(z)
        for u_hat, w, b in self.step_parameters(context):
            t = torch.tanh((w * z).sum(-1, keepdim=True) + b)
            det = 1 + (1 - t**2) * (w * u_hat).sum(-1, keepdim=True)
            z = z + u_hat * t
            log_q = log_q - det.squeeze(-1).abs().clamp_min(1e-12).log()
        return z, log_q
