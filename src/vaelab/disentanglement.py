"""Disentanglement metrics: how well a representation's dimensions line up with ground-truth factors.

Computed as disentanglement_lib computes them (Locatello et al. 2019), with its estimators and the
sample sizes of its unsupervised study as defaults (``DisentanglementSettings``). The
representation is a function of images (the posterior mean, as there); images come from a
``FactorData`` (``vaelab.data.factors``), or anything with ``factor_sizes``,
``sample_factors(n, rng)`` and ``images_for(factors, rng)``. Factors are drawn uniformly from the
whole grid. Every metric draws from its own ``np.random.default_rng(seed)``, so a value does not
depend on which other metrics are computed, and the same seed gives the same value.

- MIG (Chen et al. 2018), ``disent/mig``: each code dimension discretized into 20 equal-width bins
  over its range (``np.histogram``); I(z_j; v_k) the discrete mutual information (nats); per factor
  the gap between its two most informative dimensions over its entropy H(v_k), averaged over
  factors. 10,000 points. 0 (no dimension singles out a factor) .. 1.
- DCI (Eastwood & Williams 2018), ``disent/dci_disentanglement``, ``disent/dci_completeness``,
  ``disent/dci_informativeness``: one gradient-boosted-tree classifier per factor (scikit-learn's
  ``GradientBoostingClassifier`` with its defaults, as disentanglement_lib) on 10,000 points; the
  importance matrix R[j, k] = the trees' feature importance of dimension j for factor k. The trees
  are the slow part (dSprites' 113 classes: minutes on one CPU core; ``dci_jobs`` grows the K
  factors' trees in parallel threads).
  Disentanglement = sum_j rho_j (1 - H_K(R[j, :])) with rho_j = sum_k R[j, k] / sum R and H_K the
  entropy in base K of the normalized row; completeness likewise per factor over the dimensions
  (base D); informativeness = the classifiers' mean accuracy on 5,000 held-out points (as
  disentanglement_lib reports it: an accuracy, not an error).
- SAP (Kumar et al. 2018), ``disent/sap``: for each (dimension, factor) a linear SVM
  (``LinearSVC(C=0.01, class_weight="balanced")``) on that one dimension, trained on 10,000 points
  and scored by its accuracy on 5,000 others; per factor the gap between the two best dimensions,
  averaged. With ``sap_continuous`` the score of a pair is instead its squared correlation.
- FactorVAE score (Kim & Mnih 2018), ``disent/factor_vae``: each dimension divided by its standard
  deviation over 10,000 points (dimensions with a deviation below 0.05 are left out); one vote =
  a batch of 64 points sharing one random factor's value, and the dimension of least normalized
  variance in it; the classifier maps each dimension to the factor with most of its 10,000
  training votes; the score is its accuracy on 5,000 further votes (1 / K at chance).
- beta-VAE score (Higgins et al. 2017), ``disent/beta_vae``: one point = the mean over 64 pairs
  of |z(x1) - z(x2)|, where each pair shares the value of one random factor; a logistic regression
  (scikit-learn's defaults) predicts that factor from 10,000 such points, scored by its accuracy
  on 5,000 others.

Representations are computed ``encode_batch`` images at a time (the result does not depend on it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from joblib import Parallel, delayed
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC

from vaelab.errors import ConfigError

RepresentationFn = Callable[[torch.Tensor], torch.Tensor]  # images [n, C, H, W] -> codes [n, D]
METRICS = ("mig", "dci", "sap", "factor_vae", "beta_vae")


@dataclass(frozen=True)
class DisentanglementSettings:
    """Sample sizes and estimator settings; the defaults are disentanglement_lib's
    (unsupervised_study_v1 metric configs)."""

    mig_num_train: int = 10_000
    num_bins: int = 20
    dci_num_train: int = 10_000
    dci_num_test: int = 5_000
    dci_jobs: int = 1  # factors whose trees are grown at once (threads); the trees dominate the run time
    sap_num_train: int = 10_000
    sap_num_test: int = 5_000
    sap_continuous: bool = False
    factor_vae_batch_size: int = 64
    factor_vae_num_train: int = 10_000
    factor_vae_num_eval: int = 5_000
    factor_vae_num_variance: int = 10_000
    factor_vae_prune_threshold: float = 0.05
    beta_vae_batch_size: int = 64
    beta_vae_num_train: int = 10_000
    beta_vae_num_eval: int = 5_000
    encode_batch: int = 1_000


@torch.no_grad()
def encode(representation_fn: RepresentationFn, factor_data, factors: np.ndarray, rng: np.random.Generator,
           encode_batch: int = 1_000) -> np.ndarray:
    """The codes of the images of factor vectors [n, K]: float64 [n, D]."""
    codes = [representation_fn(factor_data.images_for(factors[i : i + encode_batch], rng))
             for i in range(0, len(factors), encode_batch)]
    return torch.cat([c.detach().double().cpu() for c in codes]).numpy()


def sample_codes(representation_fn: RepresentationFn, factor_data, n: int, rng: np.random.Generator,
                 encode_batch: int = 1_000) -> tuple[np.ndarray, np.ndarray]:
    """n points drawn uniformly from the grid: (codes float64 [n, D], factors int64 [n, K])."""
    factors = factor_data.sample_factors(n, rng)
    return encode(representation_fn, factor_data, factors, rng, encode_batch), factors


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each dimension [n, D] cut into ``num_bins`` equal-width bins over its range: bin numbers 1..num_bins."""
    return np.stack([np.digitize(c, np.histogram(c, num_bins)[1][:-1]) for c in codes.T], axis=1)


def mutual_information(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """I(z_j; v_k) in nats [D, K] between the discretized dimensions and the factors."""
    binned = histogram_discretize(codes, num_bins)
    return np.array([[mutual_info_score(f, b) for f in factors.T] for b in binned.T])


def factor_entropies(factors: np.ndarray) -> np.ndarray:
    """H(v_k) in nats [K] of the sampled factors."""
    return np.array([mutual_info_score(f, f) for f in factors.T])


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """Mutual information gap: mean_k (I(z_(1); v_k) - I(z_(2); v_k)) / H(v_k), z_(1), z_(2) the two
    dimensions most informative about v_k."""
    if codes.shape[1] < 2:
        raise ConfigError("MIG needs a representation of at least 2 dimensions")
    top = np.sort(mutual_information(codes, factors, num_bins), axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / factor_entropies(factors)))


def best_factor_per_latent(codes: np.ndarray, factors: np.ndarray, names: Sequence[str], num_bins: int = 20,
                           min_share: float = 0.1) -> list[tuple[str | None, float]]:
    """For each dimension, the factor it tells most about and the share of that factor's entropy
    it holds, I(z_j; v_k) / H(v_k) (as MIG weighs it); the name is None where no factor reaches
    ``min_share``. Labels for latent traversal pictures."""
    share = mutual_information(codes, factors, num_bins) / factor_entropies(factors)
    best = share.argmax(axis=1)
    return [(names[k] if share[j, k] >= min_share else None, float(share[j, k])) for j, k in enumerate(best)]


def dci_importance(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
                   factors_test: np.ndarray, seed: int = 0, jobs: int = 1) -> tuple[np.ndarray, float, float]:
    """(importance matrix R [D, K], mean train accuracy, mean test accuracy) of one
    gradient-boosted-tree classifier per factor, ``jobs`` factors at a time (threads)."""

    def fit(k: int) -> tuple[np.ndarray, float, float]:
        model = GradientBoostingClassifier(random_state=seed).fit(codes_train, factors_train[:, k])
        return (np.abs(model.feature_importances_), np.mean(model.predict(codes_train) == factors_train[:, k]),
                np.mean(model.predict(codes_test) == factors_test[:, k]))

    fits = Parallel(n_jobs=jobs, prefer="threads")(delayed(fit)(k) for k in range(factors_train.shape[1]))
    importance, train_acc, test_acc = zip(*fits, strict=True)
    return np.stack(importance, axis=1), float(np.mean(train_acc)), float(np.mean(test_acc))


def dci_disentanglement(importance: np.ndarray) -> float:
    """sum_j rho_j (1 - H_K(R[j, :])), rho_j = row sum / total (uniform if R is all zero)."""
    per_code = 1.0 - entropy(importance.T + 1e-11, base=importance.shape[1])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))


def dci_completeness(importance: np.ndarray) -> float:
    """sum_k rho_k (1 - H_D(R[:, k])), rho_k = column sum / total (uniform if R is all zero)."""
    per_factor = 1.0 - entropy(importance + 1e-11, base=importance.shape[0])
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    return float(np.sum(per_factor * weights.sum(axis=0) / weights.sum()))


def sap_matrix(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray,
               factors_test: np.ndarray, continuous: bool = False) -> np.ndarray:
    """The SAP score matrix [D, K]: the test accuracy of a linear SVM on dimension j alone
    predicting factor k, or (``continuous``) the squared correlation of the two."""
    scores = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    for j, code in enumerate(codes_train.T):
        for k, factor in enumerate(factors_train.T):
            if continuous:
                cov = np.cov(code, factor, ddof=1)
                scores[j, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
            else:
                with warnings.catch_warnings():  # liblinear may stop at its iteration cap, as in disentanglement_lib
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    svm = LinearSVC(C=0.01, class_weight="balanced").fit(code[:, None], factor)
                scores[j, k] = np.mean(svm.predict(codes_test[:, j : j + 1]) == factors_test[:, k])
    return scores


def sap(codes_train: np.ndarray, factors_train: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
        continuous: bool = False) -> float:
    """mean_k (best - second best score of a single dimension for factor k)."""
    if codes_train.shape[1] < 2:
        raise ConfigError("SAP needs a representation of at least 2 dimensions")
    top = np.sort(sap_matrix(codes_train, factors_train, codes_test, factors_test, continuous), axis=0)[::-1]
    return float(np.mean(top[0] - top[1]))


def _fixed_factor_batches(factor_data, votes: int, batch_size: int, rng: np.random.Generator):
    """(fixed factor [votes], factor vectors [votes, batch_size, K]) where every batch shares the
    value of its fixed factor (that of its first point)."""
    fixed = rng.integers(len(factor_data.factor_sizes), size=votes)
    factors = factor_data.sample_factors(votes * batch_size, rng).reshape(votes, batch_size, -1)
    rows = np.arange(votes)
    factors[rows, :, fixed] = factors[rows, 0, fixed][:, None]
    return fixed, factors


def _factor_vae_votes(representation_fn, factor_data, votes: int, settings: DisentanglementSettings,
                      rng: np.random.Generator, scale: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Votes [K, D]: how often fixing factor k left dimension j the least (normalized) variance."""
    fixed, factors = _fixed_factor_batches(factor_data, votes, settings.factor_vae_batch_size, rng)
    codes = encode(representation_fn, factor_data, factors.reshape(-1, factors.shape[-1]), rng,
                   settings.encode_batch).reshape(votes, settings.factor_vae_batch_size, -1)
    local = np.var(codes[:, :, active], axis=1, ddof=1) / scale[active] ** 2
    table = np.zeros((len(factor_data.factor_sizes), codes.shape[-1]), dtype=np.int64)
    np.add.at(table, (fixed, np.flatnonzero(active)[local.argmin(axis=1)]), 1)
    return table


def factor_vae_score(representation_fn: RepresentationFn, factor_data, rng: np.random.Generator,
                     settings: DisentanglementSettings = DisentanglementSettings()) -> dict[str, float]:
    """FactorVAE score: {train_accuracy, eval_accuracy, active_dims} (accuracies 0 if no dimension is active)."""
    codes, _ = sample_codes(representation_fn, factor_data, settings.factor_vae_num_variance, rng,
                            settings.encode_batch)
    scale = np.std(codes, axis=0, ddof=1)
    active = scale >= settings.factor_vae_prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "active_dims": 0}
    train = _factor_vae_votes(representation_fn, factor_data, settings.factor_vae_num_train, settings, rng, scale,
                              active)
    classifier = train.argmax(axis=0)  # dimension -> the factor with most of its votes
    dims = np.arange(train.shape[1])
    evaluation = _factor_vae_votes(representation_fn, factor_data, settings.factor_vae_num_eval, settings, rng, scale,
                                   active)
    return {"train_accuracy": float(train[classifier, dims].sum() / train.sum()),
            "eval_accuracy": float(evaluation[classifier, dims].sum() / evaluation.sum()),
            "active_dims": int(active.sum())}


def _beta_vae_points(representation_fn, factor_data, points: int, settings: DisentanglementSettings,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(features [points, D]: mean |z1 - z2| over a batch of pairs sharing one factor, that factor [points])."""
    batch = settings.beta_vae_batch_size
    fixed, first = _fixed_factor_batches(factor_data, points, batch, rng)
    second = factor_data.sample_factors(points * batch, rng).reshape(points, batch, -1)
    rows = np.arange(points)
    second[rows, :, fixed] = first[rows, :, fixed]
    both = np.concatenate([first, second], axis=1).reshape(-1, first.shape[-1])
    codes = encode(representation_fn, factor_data, both, rng, settings.encode_batch).reshape(points, 2 * batch, -1)
    return np.abs(codes[:, :batch] - codes[:, batch:]).mean(axis=1), fixed


def beta_vae_score(representation_fn: RepresentationFn, factor_data, rng: np.random.Generator,
                   settings: DisentanglementSettings = DisentanglementSettings()) -> dict[str, float]:
    """beta-VAE score: {train_accuracy, eval_accuracy} of a logistic regression predicting the shared factor."""
    x_train, y_train = _beta_vae_points(representation_fn, factor_data, settings.beta_vae_num_train, settings, rng)
    with warnings.catch_warnings():  # lbfgs may stop at scikit-learn's default 100 iterations, as in disentanglement_lib
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression().fit(x_train, y_train)
    x_eval, y_eval = _beta_vae_points(representation_fn, factor_data, settings.beta_vae_num_eval, settings, rng)
    return {"train_accuracy": float(model.score(x_train, y_train)), "eval_accuracy": float(model.score(x_eval, y_eval))}


def disentanglement_scores(representation_fn: RepresentationFn, factor_data, seed: int = 0,
                           settings: DisentanglementSettings = DisentanglementSettings(),
                           metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """The chosen ``metrics`` (of ``METRICS``) as ``disent/<name>`` values; each metric draws from a
    generator seeded with ``seed`` alone."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ConfigError(f"unknown disentanglement metrics {unknown}: choose from {list(METRICS)}")
    s = settings
    scores: dict[str, float] = {}
    if "mig" in metrics:
        codes, factors = sample_codes(representation_fn, factor_data, s.mig_num_train, np.random.default_rng(seed),
                                      s.encode_batch)
        scores["disent/mig"] = mig(codes, factors, s.num_bins)
    if "dci" in metrics:
        train, test = _train_test(representation_fn, factor_data, s.dci_num_train, s.dci_num_test, seed, s)
        importance, _, test_accuracy = dci_importance(*train, *test, seed=seed, jobs=s.dci_jobs)
        scores["disent/dci_disentanglement"] = dci_disentanglement(importance)
        scores["disent/dci_completeness"] = dci_completeness(importance)
        scores["disent/dci_informativeness"] = test_accuracy
    if "sap" in metrics:
        train, test = _train_test(representation_fn, factor_data, s.sap_num_train, s.sap_num_test, seed, s)
        scores["disent/sap"] = sap(*train, *test, continuous=s.sap_continuous)
    if "factor_vae" in metrics:
        result = factor_vae_score(representation_fn, factor_data, np.random.default_rng(seed), s)
        scores["disent/factor_vae"] = result["eval_accuracy"]
        scores["disent/factor_vae_active_dims"] = result["active_dims"]
    if "beta_vae" in metrics:
        scores["disent/beta_vae"] = beta_vae_score(representation_fn, factor_data, np.random.default_rng(seed),
                                                   s)["eval_accuracy"]
    return scores


def _train_test(representation_fn, factor_data, num_train: int, num_test: int, seed: int,
                settings: DisentanglementSettings):
    """((codes, factors) of num_train points, (codes, factors) of num_test more), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return (sample_codes(representation_fn, factor_data, num_train, rng, settings.encode_batch),
            sample_codes(representation_fn, factor_data, num_test, rng, settings.encode_batch))


def labelled_traversals(vae, factor_data, labels: Sequence[tuple[str | None, float]], steps: int = 9,
                        value_range: float = 2.0, seed: int = 0):
    """A matplotlib figure: one row per latent dimension, moving it from -r to r around the posterior
    mean of one image while the others stay, each row labelled with the factor that dimension best
    captures (``best_factor_per_latent``) and the share of that factor's entropy it holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    image = factor_data.images_for(factor_data.sample_factors(1, rng), rng).to(vae.device)
    mu = vae.encode(image).mu[0]
    values = torch.linspace(-value_range, value_range, steps, device=mu.device)
    z = mu.repeat(vae.latent_dim, steps, 1)
    z[torch.arange(vae.latent_dim), :, torch.arange(vae.latent_dim)] = values
    decoded = vae.decode(z.reshape(-1, vae.latent_dim)).float().cpu()  # [D * steps, C, H, W]
    fig, axes = plt.subplots(vae.latent_dim, steps, figsize=(steps * 0.9 + 2.2, vae.latent_dim * 0.9),
                             squeeze=False)
    for j in range(vae.latent_dim):
        name, share = labels[j]
        for s in range(steps):
            ax = axes[j, s]
            picture = decoded[j * steps + s]
            ax.imshow(picture.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[j, 0].set_ylabel(f"z_{j}: {name or '(none)'}\n{share:.2f}", rotation=0, ha="right", va="center",
                              fontsize=8)
    fig.suptitle(f"each row: one latent from {-value_range:g} to {value_range:g}, labelled with the factor it "
                 "captures best (share of that factor's entropy)", fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def evaluate(vae, datamodule, *, metrics: Sequence[str] = METRICS,
             settings: DisentanglementSettings = DisentanglementSettings(), traversal_steps: int = 9,
             seed: int = 0) -> tuple[dict[str, float], dict[str, object]]:
    """The chosen disentanglement metrics of a trained VAE's posterior means on its data set's factor
    grid (``datamodule.factor_data``), and the picture ``latent_traversals`` labelled with the factor
    each latent best captures."""
    factor_data = getattr(datamodule, "factor_data", None)
    if factor_data is None:
        raise ConfigError("eval.tasks=[disentanglement] needs data with known generative factors: "
                          "train on data=dsprites or data=color_dsprites")
    factor_data = factor_data.to(vae.device)
    vae.eval()

    def representation(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x.to(vae.device)).mu

    scores = disentanglement_scores(representation, factor_data, seed, settings, metrics)
    codes, factors = sample_codes(representation, factor_data, settings.mig_num_train, np.random.default_rng(seed),
                                  settings.encode_batch)
    labels = best_factor_per_latent(codes, factors, factor_data.names, settings.num_bins)
    return scores, {"latent_traversals": labelled_traversals(vae, factor_data, labels, traversal_steps, seed=seed)}
