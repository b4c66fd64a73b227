"""Training objectives (the ``objective`` config group).

Each objective receives, for a batch of B images and S samples z_s ~ q(z|x) per image: the
``LatentSample`` (z [S, B, D], log q(z_s|x), log p(z_s), the KL), log p(x|z_s) [S, B] and the
optimizer step, and returns batch-mean terms in nats per image. ``recon`` (= -E_q log p(x|z))
and ``kl`` (KL(q || p): closed form where it exists, else Monte Carlo) are reported the same way
by every objective, so that ``nelbo = recon + kl`` is always the negative ELBO.

``M2`` is the semi-supervised objective; it receives per-class terms instead (see its docstring).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from vaelab.errors import ConfigError
from vaelab.latents import LatentSample
from vaelab.posteriors import DiagonalGaussian
from vaelab.priors import standard_normal_log_prob
from vaelab.schedules import Constant, KLSchedule


@dataclass
class Terms:
    """Batch-mean terms: ``loss`` is what is minimized; ``nelbo = recon + kl`` whatever the weights."""

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # further batch means to log, by name
    # the latents the loss was computed on [B, D], for objectives that train a second network on them (FactorVAE)
    latents: torch.Tensor | None = None

    @property
    def nelbo(self) -> torch.Tensor:
        return self.recon + self.kl


def log_importance_weights(sample: LatentSample, log_px: torch.Tensor) -> torch.Tensor:
    """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x), [S, B]."""
    return log_px + sample.log_weights


class Objective:
    name = "objective"  # the option of the objective= config group
    samples = 1  # z samples per image
    extra_terms: tuple[str, ...] = ()  # the names of further batch means in Terms.extra, logged as train/<name>
    needs_gaussian_posterior = False  # True where the maths needs q = N(mu, sigma) and p = N(0, I)
    discriminator: torch.nn.Module | None = None  # a second network trained by its own optimizer (FactorVAE)

    def __init__(self, kl_schedule: KLSchedule | None = None):
        self.kl_schedule = kl_schedule or Constant()

    def setup(self, dataset_size: int, num_labelled: int | None) -> None:
        """Told the training set's size and how many of its labels are known, before training."""

    def curves(self, step: int) -> dict[str, float]:
        """The weights of the loss's terms at step t, by name, where they change during training
        (logged as ``schedule/<name>`` by the ``TrainingCurves`` callback)."""
        return {}

    def _require_constant_schedule(self, name: str) -> None:
        if not self.kl_schedule.constant:
            raise ConfigError(f"objective={name} takes no KL schedule: use kl_schedule=constant (or objective=elbo)")

    @staticmethod
    def reported(sample: LatentSample, log_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -log_px.mean(), sample.kl.mean()

    @staticmethod
    def layer_kls(sample: LatentSample) -> dict[str, torch.Tensor]:
        """Batch means of a hierarchical model's per-layer KLs, as ``kl_<layer>``."""
        return {f"kl_{name}": kl.mean() for name, kl in sample.layer_kl.items()}


class ELBO(Objective):
    """beta-weighted negative ELBO (Higgins et al. 2017; beta=1 is Kingma & Welling 2014).

        loss = E_q[-log p(x|z)] + beta * KL term,

    the KL term being KL(q(z|x) || p(z)) passed through the KL schedule (plain sum over
    dimensions with ``kl_schedule=constant``). Both terms are summed over dimensions and averaged
    over the batch: one reduction, nats per image. Where the KL has no closed form (flow
    posteriors, VampPrior, mixture prior, ladder) the schedule sees it as one group: free bits
    then apply to the whole KL, not per dimension.
    """

    name = "elbo"

    def __init__(self, beta: float = 1.0, kl_schedule: KLSchedule | None = None):
        super().__init__(kl_schedule)
        if beta < 0:
            raise ConfigError(f"objective.beta must be >= 0, got {beta}: pass objective.beta=<non-negative number>")
        self.beta = float(beta)

    def curves(self, step: int) -> dict[str, float]:
        """With a KL schedule that changes over training: its w(t) or C(t), and the beta it is multiplied by."""
        schedule = self.kl_schedule.curves(step)
        return {"beta": self.beta, **schedule} if schedule else {}

    def __call__(self, sample: LatentSample, log_px: torch.Tensor, step: int = 0) -> Terms:
        recon, kl = self.reported(sample, log_px)
        grouped = sample.kl_per_dim if sample.kl_per_dim is not None else sample.kl.unsqueeze(-1)
        kl_term = self.kl_schedule(grouped.mean(0), step)
        return Terms(loss=recon + self.beta * kl_term, recon=recon, kl=kl, extra=self.layer_kls(sample))


class IWAE(Objective):
    """Importance-weighted bound (Burda et al. 2016) with k samples:

        L_k = E[log (1/k) sum_s w_s],  w_s = p(x, z_s) / q(z_s|x).

    Its gradient is sum_s w~_s grad log w_s with the normalized weights w~ = softmax(log w)
    held constant; the loss is built as that surrogate (weights detached), with its value
    replaced by -L_k so that the logged loss is the bound itself.
    """

    name = "iwae"

    def __init__(self, k: int = 5, kl_schedule: KLSchedule | None = None):
        super().__init__(kl_schedule)
        if k < 1:
            raise ConfigError(f"objective.k must be >= 1, got {k}")
        self._require_constant_schedule("iwae")
        self.samples = int(k)

    def __call__(self, sample: LatentSample, log_px: torch.Tensor, step: int = 0) -> Terms:
        log_w = log_importance_weights(sample, log_px)
        bound = (torch.logsumexp(log_w, 0) - math.log(self.samples)).mean()
        surrogate = -(torch.softmax(log_w, 0).detach() * log_w).sum(0).mean()
        loss = surrogate + (-bound - surrogate).detach()
        recon, kl = self.reported(sample, log_px)
        return Terms(loss=loss, recon=recon, kl=kl, extra=self.layer_kls(sample))


class BetaTC(Objective):
    """beta-TC-VAE (Chen et al. 2018): the KL split into index-code MI, total correlation and
    dimension-wise KL, with the TC weighted by beta:

        loss = recon + alpha * I(x; z) + beta * TC(z) + gamma * sum_d KL(q(z_d) || p(z_d)),

    q(z) and q(z_d) estimated on the minibatch with minibatch-stratified sampling over a
    training set of ``dataset_size`` images (set by the module from the data). It needs the
    Gaussian posterior and the standard-normal prior. The three terms are logged as
    ``train/mi``, ``train/tc`` and ``train/dwkl`` (nats per image; they sum to the Monte-Carlo KL).
    """

    name = "beta_tc"
    needs_gaussian_posterior = True
    extra_terms = ("mi", "tc", "dwkl")

    def __init__(self, beta: float = 6.0, alpha: float = 1.0, gamma: float = 1.0,
                 kl_schedule: KLSchedule | None = None, dataset_size: int | None = None):
        super().__init__(kl_schedule)
        if min(alpha, beta, gamma) < 0:
            raise ConfigError("objective.alpha, beta and gamma must be >= 0")
        self._require_constant_schedule("beta_tc")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.dataset_size = dataset_size

    def setup(self, dataset_size: int, num_labelled: int | None) -> None:
        if self.dataset_size is None:
            self.dataset_size = dataset_size

    def log_stratified_weights(self, batch: int, device) -> torch.Tensor:
        """log of the minibatch-stratified importance weights W [B, B] (Chen et al. 2018, appendix
        C.2), with N = ``dataset_size`` and M = B - 1: row i estimates q(z_i) = (1/N) sum_n q(z_i|x_n)
        from the batch as sum_j W_ij q(z_i|x_j), with

            W_ii = 1/N (z_i's own image),  W_i,i+1 = (N - M) / (N M) (the stratified cell; the last
            row wraps to column 0),  W_ij = 1/M elsewhere,

        so that each row sums to 1 and, over random batches, the estimate of q(z_i) is unbiased."""
        n, m = self.dataset_size, batch - 1
        rows = torch.arange(batch, device=device)
        weights = torch.full((batch, batch), 1.0 / m, device=device, dtype=torch.float64)
        weights[rows, rows] = 1.0 / n
        weights[rows, (rows + 1) % batch] = (n - m) / (n * m)
        return weights.log().float()

    def log_aggregate_posteriors(self, q: DiagonalGaussian, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch estimates of log q(z_i) and log prod_d q(z_id) [B] for z_i ~ q(z|x_i) [B, D],
        q(z) = (1/N) sum_n q(z|x_n) being the aggregate posterior over the training set."""
        batch = len(z)
        if batch < 2:
            raise ConfigError("objective=beta_tc needs batches of at least 2 images")
        # log q(z_i | x_j) per dimension: [B (z), B (x), D]
        log_q_dims = -0.5 * ((z.unsqueeze(1) - q.mu.unsqueeze(0)) ** 2 / q.logvar.exp().unsqueeze(0)
                             + q.logvar.unsqueeze(0) + math.log(2 * math.pi))
        log_w = self.log_stratified_weights(batch, z.device).to(z.dtype)
        log_qz = torch.logsumexp(log_w + log_q_dims.sum(2), dim=1)
        log_prod_qzd = torch.logsumexp(log_w.unsqueeze(-1) + log_q_dims, dim=1).sum(1)
        return log_qz, log_prod_qzd

    def __call__(self, sample: LatentSample, log_px: torch.Tensor, step: int = 0) -> Terms:
        if self.dataset_size is None:
            raise ConfigError("objective=beta_tc needs the training-set size (objective.dataset_size)")
        q, z = sample.base, sample.z[0]  # one sample per image: [B, D]
        log_qz, log_prod_qzd = self.log_aggregate_posteriors(q, z)
        mi = (q.log_prob(z) - log_qz).mean()
        tc = (log_qz - log_prod_qzd).mean()
        dwkl = (log_prod_qzd - standard_normal_log_prob(z)).mean()
        recon, kl = self.reported(sample, log_px)
        return Terms(loss=recon + self.alpha * mi + self.beta * tc + self.gamma * dwkl, recon=recon, kl=kl,
                     extra={"mi": mi, "tc": tc, "dwkl": dwkl})


class M2(Objective):
    """The semi-supervised objective of Kingma et al. (2014), model M2: p(x, y, z) = p(x|y, z)
    p(y) p(z) with p(y) uniform over K classes, q(z|x, y) and a classifier q(y|x).

    For a labelled image, L(x, y) = recon(x, y) + KL(q(z|x, y) || p(z)) - log p(y) (the negative
    ELBO of log p(x, y)); for an unlabelled one,

        U(x) = sum_y q(y|x) L(x, y) - H(q(y|x))

    (the negative ELBO of log p(x)). The paper minimizes, over a training set of N images of
    which N_l are labelled,

        J^a = sum_labelled L(x, y) + sum_unlabelled U(x) + a * E_labelled[-log q(y|x)],  a = 0.1 N.

    vaelab's convention is the per-image mean: J^a / N = (1/N) sum_i [bound_i + 1{i labelled}
    alpha (N / N_l) CE_i] with alpha = a / N, so the paper's a = 0.1 N is ``alpha = 0.1`` (the
    default), each labelled image's cross-entropy weighted alpha N / N_l (as in the authors' code,
    ``alpha * n_tot / n_labeled``). A batch's loss is that per-image mean over its images,

        loss = (1 / |batch|) sum_i [bound_i + 1{i labelled} alpha (N / N_l) CE_i].

    (vaelab's batches hold as many labelled images as unlabelled ones, so labelled images weigh
    more per batch than their share of the data set; the weight of each image's cross-entropy
    relative to its own bound is the paper's.) N and N_l are set from the data at the start of
    training (``setup``). Input: per-class recon and KL [B, K] (the model run once per class), the
    classifier's logits [B, K] and the labels [B] (-1 where unknown).

    Reported: ``recon`` is the q(y|x)-weighted (labelled: true-class) reconstruction term and
    ``kl`` the KL of both latents, KL(q(y|x) || p(y)) + E_q(y|x) KL(q(z|x, y) || p(z)) (labelled:
    -log p(y) + KL), so that ``nelbo = recon + kl`` is U(x) or L(x, y); ``extra`` holds
    ``classifier_ce``, the labelled images' mean cross-entropy.
    """

    name = "m2"
    extra_terms = ("classifier_ce",)

    def __init__(self, alpha: float = 0.1, kl_schedule: KLSchedule | None = None,
                 dataset_size: int | None = None, num_labelled: int | None = None):
        super().__init__(kl_schedule)
        if alpha < 0:
            raise ConfigError(f"objective.alpha must be >= 0, got {alpha}")
        self._require_constant_schedule("m2")
        self.alpha = float(alpha)
        self.dataset_size, self.num_labelled = dataset_size, num_labelled

    def setup(self, dataset_size: int, num_labelled: int | None) -> None:
        self.dataset_size, self.num_labelled = dataset_size, num_labelled

    @property
    def ce_weight(self) -> float:
        """alpha N / N_l: the weight of a labelled image's cross-entropy beside its bound."""
        if not self.dataset_size or not self.num_labelled:
            raise ConfigError("objective=m2 needs the training-set size and its number of labelled images "
                              "(objective.dataset_size, objective.num_labelled; set from the data when training)")
        return self.alpha * self.dataset_size / self.num_labelled

    @staticmethod
    def per_image(recon_y: torch.Tensor, kl_y: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
        """(recon [B], kl [B], cross-entropy [B] (0 where the label is unknown), labelled [B] bool)."""
        num_classes = logits.shape[-1]
        labelled = labels >= 0
        log_q_y = torch.log_softmax(logits, -1)
        # q(y|x) for unlabelled images, the one-hot true label for labelled ones
        weights = torch.where(labelled.unsqueeze(-1), F.one_hot(labels.clamp(min=0), num_classes).to(log_q_y),
                              log_q_y.exp())
        # the label's KL: -log p(y) = log K if known, else KL(q(y|x) || p(y)) = log K - H(q(y|x))
        label_kl = math.log(num_classes) + torch.where(labelled, 0.0, (log_q_y.exp() * log_q_y).sum(-1))
        recon = (weights * recon_y).sum(-1)
        kl = (weights * kl_y).sum(-1) + label_kl
        ce = torch.where(labelled, -log_q_y.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
        return recon, kl, ce, labelled

    def __call__(self, recon_y: torch.Tensor, kl_y: torch.Tensor, logits: torch.Tensor,
                 labels: torch.Tensor) -> Terms:
        recon, kl, ce, labelled = self.per_image(recon_y, kl_y, logits, labels)
        loss = (recon + kl + self.ce_weight * ce).mean()  # L(x, y) or U(x) per image, plus the classifier term
        ce_mean = ce.sum() / labelled.sum().clamp(min=1)
        return Terms(loss=loss, recon=recon.mean(), kl=kl.mean(), extra={"classifier_ce": ce_mean})


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each dimension of z [B, D] permuted across the batch independently of the others (Kim & Mnih
    2018, Algorithm 1): every marginal q(z_d) is kept exactly, the dependence between dimensions is
    broken, so the rows are samples of prod_d q(z_d)."""
    order = torch.rand(z.shape, generator=generator, device=z.device).argsort(dim=0)
    return z.gather(0, order)


class TCDiscriminator(torch.nn.Module):
    """The FactorVAE discriminator (Kim & Mnih 2018): an MLP of ``layers`` hidden layers of ``hidden``
    units with LeakyReLU(0.2) (6 x 1000 in the paper) mapping z [B, D] to two logits [B, 2]:
    "z drawn from q(z)" (column 0) and "z drawn from prod_d q(z_d)" (column 1)."""

    def __init__(self, latent_dim: int, hidden: int = 1000, layers: int = 6):
        super().__init__()
        if min(latent_dim, hidden, layers) < 1:
            raise ConfigError("the TC discriminator needs latent_dim, hidden and layers >= 1")
        widths = [latent_dim] + [hidden] * layers
        body: list[torch.nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            body += [torch.nn.Linear(w_in, w_out), torch.nn.LeakyReLU(0.2)]
        self.net = torch.nn.Sequential(*body, torch.nn.Linear(widths[-1], 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def log_density_ratio(self, z: torch.Tensor) -> torch.Tensor:
        """log D(z) / (1 - D(z)) = logit_0 - logit_1 [B], D(z) = softmax(logits)_0: at the optimal
        discriminator, log q(z) / prod_d q(z_d)."""
        logits = self(z)
        return logits[:, 0] - logits[:, 1]

    def loss(self, z: torch.Tensor, z_other: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The discriminator's cross-entropy, -1/2 [mean log D(z) + mean log(1 - D(permute_dims(z')))]:
        z [B, D] (from q(z)) labelled 0, the permuted z' labelled 1; z' is a second batch's latents
        (the paper) or, when None, z itself (disentanglement_lib). Both are detached: this loss
        trains the discriminator only."""
        fake = permute_dims((z if z_other is None else z_other).detach(), generator)
        real_logits, fake_logits = self(z.detach()), self(fake)
        zeros = torch.zeros(len(real_logits), dtype=torch.long, device=z.device)
        ones = torch.ones(len(fake_logits), dtype=torch.long, device=z.device)
        return 0.5 * (F.cross_entropy(real_logits, zeros) + F.cross_entropy(fake_logits, ones))


class FactorVAE(Objective):
    """FactorVAE (Kim & Mnih 2018): the ELBO plus a weighted estimate of the total correlation
    TC(z) = KL(q(z) || prod_d q(z_d)),

        loss = recon + KL + gamma * TC^,  TC^ = mean_b log D(z_b) / (1 - D(z_b)),

    the density-ratio trick: a discriminator D (``TCDiscriminator``) tells samples of q(z) from
    samples of prod_d q(z_d) (``permute_dims``), and at its optimum D / (1 - D) = q(z) / prod_d q(z_d).
    TC^ is computed on the first z sample of each image and is logged as ``tc``; gradients reach the
    encoder through z. The discriminator is trained alongside on ``discriminator.loss`` by its own
    optimizer, ``discriminator_optimizer(discriminator.parameters())`` (default: Adam with lr 1e-4
    and betas (0.5, 0.9), as Kim & Mnih); that is the training loop's part, and the VAE's step must
    not update the discriminator.
    """

    name = "factor_vae"
    extra_terms = ("tc",)

    def __init__(self, gamma: float = 10.0, discriminator: TCDiscriminator | None = None,
                 discriminator_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 kl_schedule: KLSchedule | None = None):
        super().__init__(kl_schedule)
        if gamma < 0:
            raise ConfigError(f"objective.gamma must be >= 0, got {gamma}")
        if discriminator is None:
            raise ConfigError("objective=factor_vae needs objective.discriminator (a vaelab.objectives.TCDiscriminator)")
        self._require_constant_schedule("factor_vae")
        self.gamma = float(gamma)
        self.discriminator = discriminator
        self.discriminator_optimizer = discriminator_optimizer or partial(torch.optim.Adam, lr=1e-4, betas=(0.5, 0.9))

    def __call__(self, sample: LatentSample, log_px: torch.Tensor, step: int = 0) -> Terms:
        recon, kl = self.reported(sample, log_px)
        z = sample.z[0]
        tc = self.discriminator.log_density_ratio(z).mean()
        return Terms(loss=recon + kl + self.gamma * tc, recon=recon, kl=kl, extra={"tc": tc}, latents=z)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """The batch covariance E[x x^T] - E[x] E[x]^T of x [B, D] (divided by B, as disentanglement_lib)."""
    centred = x - x.mean(0)
    return centred.T @ centred / len(x)


def dip_regularizer(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2: how far C is from the identity."""
    diagonal = cov.diagonal()
    off_diagonal = cov - torch.diag(diagonal)
    return lambda_od * (off_diagonal**2).sum() + lambda_d * ((diagonal - 1) ** 2).sum()


class DIPVAE(Objective):
    """DIP-VAE (Kumar et al. 2018): the ELBO plus a penalty pulling a covariance of the latents
    towards the identity (``dip_regularizer``),

        loss = recon + KL + lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2,

    with C, over the batch: DIP-I (``variant=i``) Cov[mu(x)], the covariance of the posterior means;
    DIP-II (``variant=ii``) Cov[z] = Cov[mu(x)] + E[diag sigma^2(x)], the covariance of the
    aggregate posterior. Kumar et al. and disentanglement_lib use lambda_d = 10 lambda_od for
    DIP-I and lambda_d = lambda_od for DIP-II. The penalty is logged as ``dip``. It reads the
    Gaussian posterior's mu and sigma, so it needs posterior=gaussian.
    """

    name = "dip_vae"
    needs_gaussian_posterior = True
    extra_terms = ("dip",)

    def __init__(self, variant: str = "i", lambda_od: float = 10.0, lambda_d: float = 100.0,
                 kl_schedule: KLSchedule | None = None):
        super().__init__(kl_schedule)
        if variant not in ("i", "ii"):
            raise ConfigError(f"objective.variant must be i or ii (DIP-VAE-I or DIP-VAE-II), got {variant!r}")
        if min(lambda_od, lambda_d) < 0:
            raise ConfigError("objective.lambda_od and objective.lambda_d must be >= 0")
        self._require_constant_schedule("dip_vae")
        self.variant, self.lambda_od, self.lambda_d = variant, float(lambda_od), float(lambda_d)

    def covariance(self, sample: LatentSample) -> torch.Tensor:
        """C [D, D]: Cov[mu] (DIP-I) or Cov[mu] + mean diag(sigma^2) (DIP-II)."""
        q = sample.base
        cov = covariance(q.mu)
        return cov if self.variant == "i" else cov + torch.diag(q.logvar.exp().mean(0))

    def __call__(self, sample: LatentSample, log_px: torch.Tensor, step: int = 0) -> Terms:
        recon, kl = self.reported(sample, log_px)
        dip = dip_regularizer(self.covariance(sample), self.lambda_od, self.lambda_d)
        return Terms(loss=recon + kl + dip, recon=recon, kl=kl, extra={"dip": dip})
