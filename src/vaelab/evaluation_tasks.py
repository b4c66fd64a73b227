"""What a trained VAE is measured on beyond its loss: ``eval.tasks`` in ``vaelab.eval``, and
``eval.after_training`` at the end of ``vaelab.train`` (the ``ApplicationTasks`` callback).

- ``nll``: the test set's likelihood bounds and latent diagnostics (``trainer.test``; ``vaelab.eval`` only);
- ``samples``: sample quality per sampler (``vaelab.sample_quality``, group ``sample_quality/``);
- ``completion``: image completion (``vaelab.completion``, group ``completion/``);
- ``representation``: probes and clusters of the latents (``vaelab.representation``, group ``representation/``);
- ``disentanglement``: the disentanglement metrics, on data with known factors (``vaelab.disentanglement``,
  group ``disentanglement/``).

Each application task is a partial of its group's config, called as ``task(vae, datamodule, ...,
seed=seed)`` and returning (metrics, {name: picture}); a picture is a grid tensor [C, H, W] or a
matplotlib figure. ``samples`` and ``completion`` share the cached domain classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vaelab.errors import ConfigError
from vaelab.representation import posterior_means
from vaelab.samplers import PriorSampler

TASKS = ("nll", "samples", "completion", "representation", "disentanglement")
APPLICATIONS = TASKS[1:]
# what each task's pictures show (their captions in TensorBoard)
CAPTIONS = {
    "completion": "image completion: the masked test images (holes grey), then one row per method (the baselines "
                  "and the samplers' completions), then the truth",
    "latent_space": "the test images' posterior means in 2-D, coloured by label (the latents themselves for D = 2, "
                    "else a projection)",
    "latent_manifold": "the decoder over a grid of the prior's quantiles: z_1 across, z_2 down (Kingma & Welling "
                       "2014, Fig. 4)",
    "latent_traversals": "each row moves one latent from -2 to 2 around one image's posterior mean; the label names "
                         "the factor it captures best and the share of that factor's entropy it holds",
}


def checked_tasks(tasks: Iterable[str], key: str, allowed: tuple[str, ...] = TASKS) -> set[str]:
    """The set of ``tasks`` (the setting ``key``), or one clear error naming the unknown ones."""
    chosen = set(tasks)
    if chosen - set(allowed):
        raise ConfigError(f"{key}=[{','.join(sorted(chosen))}] is invalid: choose among {', '.join(allowed)}, "
                          f"e.g. {key}=[{allowed[-1]}]")
    return chosen


def fitted_samplers(vae, sampler, datamodule, seed: int) -> dict:
    """{name: sampler}: the prior, and a sampler that needs fitting (``sampler=gmm``) fitted to the
    posterior means of every training image (conditional models: given the true label)."""
    samplers = {"prior": PriorSampler()}
    if sampler.needs_fit:
        datamodule.setup("fit")
        sampler.fit(posterior_means(vae, datamodule.train_set, datamodule.eval_batch_size, seed)[0])
        samplers[sampler.name] = sampler
    return samplers


def run_applications(vae, datamodule, tasks: set[str], runs: dict[str, Callable], samplers: dict,
                     domain_classifier: Callable, seed: int) -> tuple[dict[str, float], dict[str, object]]:
    """The chosen application tasks, in ``APPLICATIONS`` order: their metrics and pictures.
    ``runs`` maps each task to its partial (the group configs, instantiated)."""
    metrics, pictures = {}, {}
    classifier = domain_classifier(datamodule) if tasks & {"samples", "completion"} else None
    extra = {"samples": (samplers, classifier), "completion": (classifier,)}
    for task in APPLICATIONS:
        if task in tasks:
            task_metrics, task_pictures = runs[task](vae, datamodule, *extra.get(task, ()), seed=seed)
            metrics.update(task_metrics)
            pictures.update(task_pictures)
    return metrics, pictures
