"""The disentanglement metrics on synthetic codes whose answers are known.

The ground truth is a grid of K = 4 discrete factors of sizes 2, 3, 4, 5; the "images" handed to
the representation are the factor classes themselves, so each code below is an exact function of
the factors:

- perfect: z_k = v_k (scaled to [0, 1]);
- rotated: the perfect code centred and turned by a random rotation (all information kept, every
  dimension mixing every factor);
- dup_missing: (v_0, v_0, v_2, v_3): factor 0 twice, factor 1 nowhere;
- noise: independent standard normal noise;
- and, for DCI, duplicated (v_0, v_0, v_1, v_2, v_3) and merged (3 v_0 + v_1, v_2, v_3, noise).
"""

import numpy as np
import pytest
import torch

from vaelab.disentanglement import (
    DisentanglementSettings,
    best_factor_per_latent,
    dci_completeness,
    dci_disentanglement,
    disentanglement_scores,
    sample_codes,
)
from vaelab.errors import ConfigError

SIZES = (2, 3, 4, 5)
K = len(SIZES)
CHANCE = np.mean([1 / s for s in SIZES])  # mean accuracy of guessing each factor


class FactorClasses:
    """A factor grid whose "images" are the factor classes as floats [n, K]."""

    factor_sizes = SIZES

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(s, size=n) for s in SIZES], axis=1)

    def images_for(self, factors, rng):
        return torch.from_numpy(np.asarray(factors, dtype=np.float64))


SCALE = torch.tensor([1 / (s - 1) for s in SIZES], dtype=torch.float64)
ROTATION = torch.linalg.qr(torch.randn(K, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]


def noise(f: torch.Tensor) -> torch.Tensor:
    """Standard normal noise [n, K], a fresh draw per call (seeded by the call's factors)."""
    seed = int(f[:64].sum()) * 1_000 + len(f)
    return torch.randn(f.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CODES = {
    "perfect": lambda f: f * SCALE,
    "rotated": lambda f: (f * SCALE - 0.5) @ ROTATION,
    "dup_missing": lambda f: (f * SCALE)[:, [0, 0, 2, 3]],
    "noise": noise,
    "duplicated": lambda f: (f * SCALE)[:, [0, 0, 1, 2, 3]],
    "merged": lambda f: torch.stack([3 * f[:, 0] + f[:, 1], f[:, 2], f[:, 3], noise(f)[:, 0]], dim=1),
}
SMALL = DisentanglementSettings(
    mig_num_train=2000, dci_num_train=600, dci_num_test=300, sap_num_train=1000, sap_num_test=500,
    factor_vae_num_train=400, factor_vae_num_eval=400, factor_vae_num_variance=1000,
    beta_vae_num_train=300, beta_vae_num_eval=300,
)


def scores(code: str, metric: str, settings=SMALL, **changes) -> dict[str, float]:
    return disentanglement_scores(CODES[code], FactorClasses(), seed=0,
                                  settings=DisentanglementSettings(**{**settings.__dict__, **changes}),
                                  metrics=(metric,))


def test_mig_is_one_for_the_factors_and_counts_the_factors_held_alone():
    """Catches: no division by H(v_k) (perfect would be the mean entropy, 1.2 nats), the sort in
    the wrong direction (negative gaps), a gap to the third best dimension."""
    mig = {code: scores(code, "mig")["disent/mig"] for code in ("perfect", "rotated", "dup_missing", "noise")}
    assert mig["perfect"] == pytest.approx(1.0, abs=0.02)  # below 1 only by the plug-in MI bias
    assert mig["dup_missing"] == pytest.approx((K - 2) / K, abs=0.02)  # factors 0 and 1 have no gap
    assert mig["noise"] == pytest.approx(0.0, abs=0.02)
    assert mig["noise"] < mig["rotated"] < 0.3 < mig["dup_missing"] < mig["perfect"]


def test_dci_formulas_on_hand_made_importance_matrices():
    """Against the definitions by hand. Catches: rows and columns swapped (D <-> C), weights
    left uniform instead of rho_j, an entropy in the wrong base."""
    one_code_two_factors = np.array([[1.0, 1.0], [0.0, 0.0]])
    assert dci_disentanglement(one_code_two_factors) == pytest.approx(0.0, abs=1e-9)  # H_2([.5, .5]) = 1
    assert dci_completeness(one_code_two_factors) == pytest.approx(1.0, abs=1e-9)
    weighted = np.array([[2.0, 2.0], [1.0, 0.0]])  # code 0: both factors (D 0, weight 4/5), code 1: one (D 1, 1/5)
    assert dci_disentanglement(weighted) == pytest.approx(0.2)
    h = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))  # factor 0 over codes 0, 1 as 2:1 (weight 3/5)
    assert dci_completeness(weighted) == pytest.approx(3 / 5 * (1 - h) + 2 / 5 * 1)
    two_codes_one_factor = np.array([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert dci_disentanglement(two_codes_one_factor) == pytest.approx(1.0, abs=1e-9)
    # factor 0 spread over 2 of 3 codes: 1 - H_3([.5, .5]) = 1 - log 2 / log 3, weight 1/2; factor 1 has no weight
    assert dci_completeness(two_codes_one_factor) == pytest.approx(0.5 * (1 - np.log(2) / np.log(3)) + 0.5)


def test_dci_scores_each_code_as_its_structure_says():
    """Catches: D and C exchanged (merged would score D 1, C 0.75), unweighted codes (merged: D
    0.625), informativeness from the training points (noise would look informative)."""
    dci = {code: scores(code, "dci") for code in CODES}
    for name in ("disentanglement", "completeness", "informativeness"):
        assert dci["perfect"][f"disent/dci_{name}"] == pytest.approx(1.0, abs=1e-6)
    # merged: code 0 holds factors 0 and 1 equally (1 - H_4([.5, .5]) = 1/2, weight 2/4), codes 1, 2 one each
    assert dci["merged"]["disent/dci_disentanglement"] == pytest.approx(0.5 * 0.5 + 0.25 + 0.25, abs=0.02)
    assert dci["merged"]["disent/dci_completeness"] == pytest.approx(1.0, abs=0.01)
    assert dci["duplicated"]["disent/dci_disentanglement"] == pytest.approx(1.0, abs=0.01)
    assert dci["duplicated"]["disent/dci_completeness"] < 0.95  # factor 0 spread over two codes
    # dup_missing: factor 1 guessed, the others exact
    assert dci["dup_missing"]["disent/dci_informativeness"] == pytest.approx((K - 1 + 1 / SIZES[1]) / K, abs=0.04)
    assert dci["noise"]["disent/dci_informativeness"] == pytest.approx(CHANCE, abs=0.06)
    assert dci["rotated"]["disent/dci_informativeness"] > 0.9  # a rotation keeps the information...
    for name in ("disentanglement", "completeness"):  # ... but not the alignment
        d = {code: dci[code][f"disent/dci_{name}"] for code in CODES}
        assert d["noise"] < 0.05
        assert d["noise"] < d["rotated"] < 0.3 < d["dup_missing"] < d["perfect"]


def test_sap_continuous_takes_the_gap_of_squared_correlations():
    """Catches: the best score alone instead of the gap (dup_missing would be 0.75), an unsquared
    correlation (rotated codes would score higher)."""
    sap = {code: scores(code, "sap", sap_continuous=True)["disent/sap"] for code in CODES}
    assert sap["perfect"] == pytest.approx(1.0, abs=0.01)
    assert sap["dup_missing"] == pytest.approx((K - 2) / K, abs=0.02)
    assert sap["duplicated"] == pytest.approx((K - 1) / K, abs=0.02)
    assert sap["noise"] == pytest.approx(0.0, abs=0.02)
    assert sap["noise"] < sap["rotated"] < sap["dup_missing"] < sap["perfect"]


def test_sap_with_linear_svms_orders_the_codes_and_is_half_for_binary_factors():
    """disentanglement_lib's default (one-dimensional linear SVMs, test accuracy). A perfect code
    of binary factors: its own dimension is right every time, any other at chance, so 1 - 1/2.
    Catches: the best score instead of the gap (binary: 1)."""
    sap = {code: scores(code, "sap")["disent/sap"] for code in ("perfect", "rotated", "dup_missing", "noise")}
    assert sap["noise"] == pytest.approx(0.0, abs=0.03)
    assert sap["noise"] < sap["rotated"] < sap["perfect"] and sap["noise"] < sap["dup_missing"] < sap["perfect"]

    class BinaryFactors(FactorClasses):
        factor_sizes = (2, 2, 2)

        def sample_factors(self, n, rng):
            return rng.integers(2, size=(n, 3))

    binary = disentanglement_scores(lambda f: f, BinaryFactors(), seed=0, settings=SMALL, metrics=("sap",))
    assert binary["disent/sap"] == pytest.approx(0.5, abs=0.05)


def test_factor_vae_score_is_the_majority_vote_accuracy():
    """perfect: 1; dup_missing: the missing factor's votes go to the other factors' dimensions, so
    1 - 1/K; noise: chance, 1/K, whatever few votes trained the classifier. Catches: no division by
    the global scale (the rescaled noisy code would vote for its smallest dimension), no pruning
    (the constant dimension would take every vote), the accuracy on the training votes (8 votes on
    noise fit well above chance)."""
    fv = {code: scores(code, "factor_vae")["disent/factor_vae"] for code in ("perfect", "rotated", "dup_missing",
                                                                            "noise")}
    assert fv["perfect"] == 1.0
    assert fv["dup_missing"] == pytest.approx(1 - 1 / K, abs=0.05)
    assert fv["noise"] == pytest.approx(1 / K, abs=0.07)
    assert fv["noise"] < fv["rotated"] < fv["perfect"]
    assert scores("noise", "factor_vae", factor_vae_num_train=8)["disent/factor_vae"] == pytest.approx(1 / K, abs=0.07)
    scales = torch.tensor([1.0, 100.0, 0.2, 3.0], dtype=torch.float64)
    scaled = lambda f: torch.cat([(f * SCALE + 0.05 * noise(f)) * scales,
                                  torch.zeros(len(f), 1, dtype=f.dtype)], dim=1)
    result = disentanglement_scores(scaled, FactorClasses(), seed=0, settings=SMALL, metrics=("factor_vae",))
    assert result == {"disent/factor_vae": 1.0, "disent/factor_vae_active_dims": K}


def test_beta_vae_score_finds_the_shared_factor():
    """perfect: 1; dup_missing: also 1 (the missing factor is recognized as the one that leaves no
    dimension unchanged); noise: chance. Catches: pairs that do not share the chosen factor (every
    code at chance), the feature |z1 - z2| averaged over dimensions instead of over the batch."""
    bv = {code: scores(code, "beta_vae")["disent/beta_vae"] for code in ("perfect", "rotated", "dup_missing",
                                                                        "noise")}
    assert bv["perfect"] == pytest.approx(1.0, abs=0.01)
    assert bv["dup_missing"] == pytest.approx(1.0, abs=0.02)
    assert bv["noise"] == pytest.approx(1 / K, abs=0.08)
    assert bv["noise"] < bv["rotated"] < bv["perfect"]


def test_scores_are_reproducible_and_each_metric_draws_its_own_points():
    """Catches: a global random state (a second call would differ), one generator shared by the
    metrics (MIG alone would differ from MIG after the others)."""
    settings = DisentanglementSettings(mig_num_train=500, dci_num_train=150, dci_num_test=100, sap_num_train=300,
                                       sap_num_test=150, factor_vae_num_train=100, factor_vae_num_eval=100,
                                       factor_vae_num_variance=300, beta_vae_num_train=100, beta_vae_num_eval=100)
    first = disentanglement_scores(CODES["rotated"], FactorClasses(), seed=3, settings=settings)
    again = disentanglement_scores(CODES["rotated"], FactorClasses(), seed=3, settings=settings)
    assert first == again
    assert set(first) == {"disent/mig", "disent/dci_disentanglement", "disent/dci_completeness",
                          "disent/dci_informativeness", "disent/sap", "disent/factor_vae",
                          "disent/factor_vae_active_dims", "disent/beta_vae"}
    alone = disentanglement_scores(CODES["rotated"], FactorClasses(), seed=3, settings=settings, metrics=("mig",))
    assert alone == {"disent/mig": first["disent/mig"]}
    threads = DisentanglementSettings(**{**settings.__dict__, "dci_jobs": 2})
    in_parallel = disentanglement_scores(CODES["rotated"], FactorClasses(), seed=3, settings=threads, metrics=("dci",))
    assert in_parallel == {k: v for k, v in first.items() if k.startswith("disent/dci")}
    other = disentanglement_scores(CODES["rotated"], FactorClasses(), seed=4, settings=settings, metrics=("mig",))
    assert other["disent/mig"] != first["disent/mig"]
    with pytest.raises(ConfigError, match=r"unknown disentanglement metrics \['irs'\]"):
        disentanglement_scores(CODES["perfect"], FactorClasses(), metrics=("mig", "irs"))


def test_each_latent_is_labelled_with_the_factor_it_holds():
    codes, factors = sample_codes(CODES["dup_missing"], FactorClasses(), 2000, np.random.default_rng(0))
    names = ("colour", "size", "angle", "x")
    labels = best_factor_per_latent(codes, factors, names)
    assert [name for name, _ in labels] == ["colour", "colour", "angle", "x"]
    assert all(share == pytest.approx(1.0, abs=0.01) for _, share in labels)
    codes, factors = sample_codes(CODES["merged"], FactorClasses(), 2000, np.random.default_rng(0))
    labels = best_factor_per_latent(codes, factors, names)
    assert [name for name, _ in labels] == ["colour", "angle", "x", None]  # the noise dimension holds nothing
    assert labels[3][1] < 0.1
