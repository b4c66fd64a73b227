"""What each logged metric is: its unit, which bound or estimate it is, and for which models it is
defined. One table serves the end-of-run summary on the console, ``metrics.json`` (``about``),
TensorBoard (the text summary ``about/metrics``) and the README's "What is logged".

A metric that does not apply to a run is not logged at all (never as zero or NaN): ``bpd`` only
where the likelihood is a probability mass over the data's values, ``kl_per_dim`` only where the
model's KL is the sum of per-dimension closed forms, ``kl_z1``/``kl_z2`` only for the two-layer
model, ``error`` and ``classifier_ce`` only for M2, the beta-TC terms only for ``objective=beta_tc``.
"""

from __future__ import annotations

from dataclasses import dataclass

NATS = "nats/image"


@dataclass(frozen=True)
class RunFacts:
    """What the meaning of a run's metrics depends on."""

    code_length: bool = True  # the likelihood is a probability mass over the data's values
    latent: str = "gaussian"  # gaussian | flow | ladder: the posterior the latent diagnostics read
    objective: str = "elbo"  # the objective= option

    @classmethod
    def of(cls, module) -> RunFacts:
        """The facts of a ``VAEModule``."""
        vae = module.vae
        latent = "ladder" if vae.ladder is not None else ("gaussian" if vae.posterior.closed_form else "flow")
        return cls(code_length=module.bits_per_dim, latent=latent, objective=module.objective.name)


_LATENT = {
    "gaussian": "of the encoder's Gaussian q(z|x)",
    "flow": "of the encoder's Gaussian q0(z0|x) before the flow (not of the flow's output z)",
    "ladder": "of q(z1|x, z2 = E[z2|x]), the lower layer given the upper layer's mean",
}


def _likelihood_note(facts: RunFacts) -> str:
    if facts.code_length:
        return ""
    return (" Here p(x|z) is not a probability mass over the data's values (e.g. Bernoulli on grey levels, the "
            "continuous relaxation of the classic example, or a Gaussian density): it is that model's bound, not a "
            "code length, and not comparable with published NLLs of binarized or 8-bit data.")


def describe(name: str, facts: RunFacts = RunFacts()) -> str:
    """One line on the metric ``name`` (``<stage>/<term>``, e.g. ``val/nelbo``), or "" when unknown."""
    stage, _, term = name.rpartition("/")
    if stage in ("val", "test"):
        described = _evaluation(term, facts)
    elif stage == "train":
        described = _training(term.removesuffix("_step"), facts)
        if described and term.endswith("_step"):
            described += " (one batch, logged every trainer.log_every_n_steps steps)"
    elif stage == "anomaly":
        described = _anomaly(term)
    elif stage == "disent":
        described = _disentanglement(term)
    elif stage == "repr":
        described = _representation(term)
    elif stage.startswith("samples"):
        described = _samples(stage.removeprefix("samples").strip("/"), term)
    elif stage.startswith("completion/"):
        described = _completion(stage.removeprefix("completion/"), term)
    elif stage == "schedule":
        described = _schedule(term)
    else:
        described = ""
    return described


def _evaluation(term: str, facts: RunFacts) -> str:
    note = _likelihood_note(facts)
    return {
        "nelbo": f"{NATS}; the negative ELBO with beta = 1 (recon + kl, one z per image), an upper bound on -log p(x) "
                 f"(-log p(x|y) for a conditional model, the label marginalized for M2).{note}",
        "recon": f"{NATS}; -log p(x|z) for one z ~ q(z|x) per image.{note}",
        "kl": f"{NATS}; KL(q(z|x) || p(z)): closed form for the Gaussian posterior and N(0, I) prior, else the "
              "one-sample Monte-Carlo estimate log q(z|x) - log p(z)",
        "nll_iw": f"{NATS}; the importance-weighted (IWAE) estimate of -log p(x) with eval.iw_samples samples, an "
                  f"upper bound in expectation that tightens as the samples grow.{note}",
        "bpd": "bits/dim; nll_iw (or nelbo where nll_iw was not computed) / (D ln 2), D the number of sub-pixels; "
               "only where p(x|z) is a probability mass over the data's values (discretized logistic on 8-bit "
               "images, Bernoulli on binarized images)",
        "active_units": "count; latent dimensions d with Var_x(E[z_d|x]) > 0.01 (Burda et al. 2016), "
                        + _LATENT[facts.latent],
        "mi": "nats; the mutual information I(x; z) under the aggregate posterior of the stage's images "
              f"(at most log N; in validation E log q(z) is averaged over the z of a fixed subset of "
              f"images, the mixture over all), {_LATENT[facts.latent]}",
        "kl_per_dim": "nats/image per dimension; KL(q(z_d|x) || N(0, 1)) averaged over images; only where the "
                      "model's KL is the sum of these closed forms (Gaussian posterior, N(0, I) prior, one layer)",
        "kl_z1": f"{NATS}; the lower layer's KL(q(z1|x, z2) || p(z1|z2)) (model=hierarchical)",
        "kl_z2": f"{NATS}; the upper layer's KL(q(z2|x) || N(0, I)) (model=hierarchical)",
        "error": "fraction; the M2 classifier q(y|x)'s test error against the true labels",
    }.get(term, "")


def _training(term: str, facts: RunFacts) -> str:
    note = _likelihood_note(facts)
    return {
        "loss": f"{NATS}; the minimized objective, epoch mean: recon + beta x the scheduled KL term (elbo), minus the "
                "IWAE bound (iwae), recon + alpha MI + beta TC + gamma dimension-wise KL (beta_tc), the M2 bound plus "
                "its classifier term (m2), recon + KL + gamma TC (factor_vae), recon + KL + the DIP penalty (dip_vae)",
        "nelbo": f"{NATS}; train/recon + train/kl, the negative ELBO with beta = 1 of the training images, epoch "
                 "mean (the curve to compare with val/nelbo; for M2 the labelled images' bound is on -log p(x, y))",
        "recon": f"{NATS}; -log p(x|z), epoch mean over the training samples.{note}",
        "kl": f"{NATS}; KL(q(z|x) || p(z)), epoch mean (closed form or one-sample Monte Carlo, as val/kl)",
        "kl_z1": f"{NATS}; the lower layer's KL (model=hierarchical)",
        "kl_z2": f"{NATS}; the upper layer's KL (model=hierarchical)",
        "classifier_ce": "nats/labelled image; -log q(y|x) of the labelled images (objective=m2)",
        "mi": f"{NATS}; beta-TC's index-code mutual information E[log q(z|x) - log q(z)], q(z) estimated on the "
              "minibatch by stratified sampling (objective=beta_tc)",
        "tc": (f"{NATS}; the total correlation KL(q(z) || prod_d q(z_d)) as FactorVAE's discriminator estimates it, "
               "E[log D(z) / (1 - D(z))], the term gamma weighs (objective=factor_vae)")
        if facts.objective == "factor_vae" else
        (f"{NATS}; beta-TC's total correlation E[log q(z) - sum_d log q(z_d)], the term beta weighs "
         "(objective=beta_tc)"),
        "dip": "the DIP-VAE penalty lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2 on the batch covariance "
               "C of the latents (objective=dip_vae)",
        "dwkl": f"{NATS}; beta-TC's dimension-wise KL sum_d KL(q(z_d) || p(z_d)) (objective=beta_tc)",
    }.get(term, "")


def _anomaly(term: str) -> str:
    if term.startswith("auroc_"):
        return (f"area under the ROC curve telling the out-of-distribution images (positives) by their "
                f"{term.removeprefix('auroc_')} score; 1 = perfect, 0.5 = chance")
    return {"inliers": "count; in-distribution test images scored", "outliers": "count; out-of-distribution images scored"}.get(term, "")


def _disentanglement(term: str) -> str:
    return {
        "mig": "0..1; the mutual information gap (Chen et al. 2018): per factor, the gap between the two latents "
               "most informative about it over its entropy, averaged (posterior means, 20 bins)",
        "dci_disentanglement": "0..1; DCI disentanglement (Eastwood & Williams 2018): how much each latent's "
                               "gradient-boosted-tree importance concentrates on one factor",
        "dci_completeness": "0..1; DCI completeness: how much each factor concentrates on one latent",
        "dci_informativeness": "fraction; DCI informativeness: the trees' test accuracy predicting the factors",
        "sap": "0..1; the separated attribute predictability (Kumar et al. 2018): per factor, the gap between the "
               "two latents that predict it best, averaged",
        "factor_vae": "fraction; the FactorVAE score (Kim & Mnih 2018): a majority-vote classifier's accuracy at "
                      "telling which factor a batch holds fixed from its least-varying latent (1/K at chance)",
        "factor_vae_active_dims": "count; latents the FactorVAE score kept (standard deviation >= 0.05)",
        "beta_vae": "fraction; the beta-VAE score (Higgins et al. 2017): a logistic regression's accuracy at telling "
                    "which factor pairs of images share, from their latent differences",
    }.get(term, "")


def _representation(term: str) -> str:
    return {
        "linear_acc": "fraction; test accuracy of a logistic regression from the posterior means to the labels",
        "knn_acc": "fraction; test accuracy of k-nearest-neighbour voting among the training posterior means",
        "cluster_acc": "fraction; k-means (K classes) accuracy, clusters matched one-to-one to classes (Hungarian)",
        "nmi": "0..1; normalized mutual information of the k-means clusters and the labels",
    }.get(term, "")


def _samples(sampler: str, term: str) -> str:
    source = "training images" if sampler == "train" else f"images generated with sampler={sampler}"
    return {
        "fd_domain": f"squared feature distance; the Frechet distance of {source} to test images on the domain "
                     "classifier's features (not FID: another network); lower is better",
        "precision_domain": f"0..1; improved precision (Kynkaanniemi et al. 2019) of {source}: the share within the "
                            "k-NN balls of test images, on the domain classifier's features",
        "recall_domain": f"0..1; improved recall of {source}: the share of test images within their k-NN balls",
        "fid": f"squared feature distance; the standard FID of {source} (Inception features)",
        "precision_inception": f"0..1; improved precision of {source} on Inception features",
        "recall_inception": f"0..1; improved recall of {source} on Inception features",
        "domain_classifier_acc": "fraction; the domain classifier's test accuracy",
    }.get(term, "")


def _completion(method: str, term: str) -> str:
    by = {"mean_image": "the mean training image (baseline)", "reconstruction": "one pass through the model "
          "(baseline)", "pseudo_gibbs": "pseudo-Gibbs sampling", "mwg": "Metropolis-within-Gibbs sampling",
          "truth": "the whole test images"}.get(method, method)
    return {
        "mse": f"per pixel; mean squared error of the missing pixels filled by {by}",
        "bce": f"nats/pixel; binary cross-entropy of the missing pixels filled by {by}",
        "domain_acc": f"fraction; the domain classifier's accuracy on the images completed by {by}",
        "acceptance": "fraction; the Metropolis acceptance rate",
    }.get(term, "")


def _schedule(term: str) -> str:
    return {
        "lr": "the learning rate of the optimizer's first parameter group at that step",
        "beta": "objective.beta, the weight of the scheduled KL term in the loss (objective=elbo)",
        "kl_weight": "w(t) in [0, 1], the KL schedule's weight at step t: loss = recon + beta w(t) KL "
                     "(kl_schedule=linear_warmup, cyclical)",
        "kl_capacity": "nats/image; C(t), the KL target of kl_schedule=capacity at step t: "
                       "loss = recon + beta gamma |KL - C(t)|",
    }.get(term, "")


def about(names, facts: RunFacts) -> dict[str, str]:
    """{name: description} for the known metrics among ``names``."""
    return {name: text for name in sorted(names) if (text := describe(name, facts))}


def table(metrics: dict, facts: RunFacts) -> str:
    """The scalar metrics as ``name = value  (unit; meaning)`` lines, for the console."""
    lines = []
    for name in sorted(k for k, v in metrics.items() if "/" in k and isinstance(v, (int, float))):
        text = describe(name, facts)
        unit = text.split(";", 1)[0] if text else ""
        lines.append(f"{name} = {metrics[name]:.4f}" + (f"  ({unit})" if unit else ""))
    return "\n".join(lines)
