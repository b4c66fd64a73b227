"""Evaluate a checkpoint: ``python -m vaelab.eval ckpt_path=... [eval.tasks=[...]]`` (``vaelab-eval``).

``eval.tasks`` chooses what is measured (default ``[nll]``):

- ``nll``: the test set's ``test/nelbo``, ``test/recon``, ``test/kl``, ``test/nll_iw`` (IWAE with
  ``eval.iw_samples`` samples), ``test/bpd`` (where defined), ``test/active_units``, ``test/mi`` and
  ``test/kl_per_dim`` (where defined);
- ``samples``: sample quality per sampler (``sample_quality/``, ``vaelab.sample_quality``);
- ``completion``: image completion (``completion/``, ``vaelab.completion``);
- ``representation``: probes and clusters of the latents (``representation/``, ``vaelab.representation``);
- ``disentanglement``: the disentanglement metrics on data with known factors
  (``disentanglement/``, ``vaelab.disentanglement``).

With ``anomaly.ood_data`` or ``anomaly.holdout_class`` it also computes the anomaly-detection
AUROCs. Writes ``metrics.json``, ``reconstructions.png`` (test images above their
reconstructions), ``samples_prior.png`` (decoded prior samples; with ``sampler=gmm`` also
``samples_gmm.png``, from a Gaussian mixture fitted to the training set's posterior means;
conditional models: one row per class, or ``sample_class``), each task's pictures as PNGs and in
a TensorBoard log (``eval/<name>``), for anomaly detection ``anomaly_<score>.png`` histograms,
into the eval run folder, and prints the metrics.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid

from vaelab import anomaly, startup
from vaelab.callbacks.diagnostics import LatentDiagnostics
from vaelab.checkpoints import load_module
from vaelab.entry import log, pin_run_dir, task_wrapper
from vaelab.errors import ConfigError, instantiate
from vaelab.evaluation_tasks import (
    CAPTIONS,
    checked_tasks,
    fitted_samplers,
    run_applications,
)
from vaelab.files import atomic_file, save_image_atomic, write_json_atomic
from vaelab.metric_info import RunFacts, about, table
from vaelab.plugins import refuse_missing_plugins
from vaelab.tensorboard import add_picture
from vaelab.vae import VAE


def datamodule_for(run_data: dict, cfg: DictConfig, **overrides):
    """The checkpoint's dataset (its run's ``data`` config), read from where this machine keeps it (``cfg.data``)."""
    data_cfg = {**run_data, **{k: v for k, v in cfg.data.items() if v is not None}, **overrides}
    return instantiate(OmegaConf.create(data_cfg))


def detect_anomalies(vae: VAE, run_data: dict, cfg: DictConfig, datamodule, out: Path) -> dict[str, float]:
    """AUROC of the nelbo and IWAE scores for in-distribution against out-of-distribution test images."""
    settings = cfg.anomaly
    if settings.ood_data and settings.holdout_class is not None:
        raise ConfigError("give anomaly.ood_data or anomaly.holdout_class, not both")
    k, chunk = cfg.eval.iw_samples or 100, cfg.eval.iw_chunk
    inliers = anomaly.score_images(vae, datamodule.test_dataloader(), k, chunk)
    if settings.ood_data:
        mirrors = [*run_data.get("extra_mirrors", []), *settings.ood_extra_mirrors]
        other = datamodule_for(run_data, cfg, name=settings.ood_data, extra_mirrors=mirrors, exclude_classes=[])
        other.setup("test")
        outliers = anomaly.score_images(vae, other.test_dataloader(), k, chunk)
        names = (run_data["name"], settings.ood_data)
    else:
        labels = datamodule.test_set.labels
        held_out = labels == int(settings.holdout_class)
        if not held_out.any():
            raise ConfigError(f"anomaly.holdout_class={settings.holdout_class} has no test images")
        outliers = {name: scores[held_out] for name, scores in inliers.items()}
        inliers = {name: scores[~held_out] for name, scores in inliers.items()}
        names = ("other classes", f"class {settings.holdout_class}")
    from torch.utils.tensorboard import SummaryWriter

    results = {}
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for score in ("nelbo", "nll_iw"):
            results[f"anomaly/auroc_{score}"] = anomaly.auroc(inliers[score], outliers[score])
            writer.add_histogram(f"anomaly/{score}_inliers", inliers[score])
            writer.add_histogram(f"anomaly/{score}_outliers", outliers[score])
            fig = anomaly.histogram_figure(inliers[score], outliers[score], score, names)
            fig.savefig(out / f"anomaly_{score}.png")
            writer.add_figure(f"anomaly/{score}_histogram", fig)
    results["anomaly/inliers"], results["anomaly/outliers"] = len(inliers["nelbo"]), len(outliers["nelbo"])
    return results


def check_sample_class(vae: VAE, sample_class: int | None) -> None:
    if sample_class is None:
        return
    if not vae.conditional:
        raise ConfigError(f"sample_class={sample_class} needs a conditional model (model.conditional=true); "
                          "this checkpoint's model is unconditional: leave sample_class=null")
    if not 0 <= sample_class < vae.num_classes:
        raise ConfigError(f"sample_class={sample_class} is not a class: choose 0..{vae.num_classes - 1}")


@torch.no_grad()
def sample_grids(vae: VAE, cfg: DictConfig, samplers: dict) -> dict[str, tuple[torch.Tensor, int]]:
    """{sampler name: (decoded samples, images per row)}. A conditional model decodes one row per class
    (the same draws in every row), or ``sample_class`` alone."""
    grids = {}
    for name, sampler in samplers.items():
        if vae.conditional and cfg.sample_class is None:  # one row per class, the same draws in each
            per_row = max(1, cfg.num_samples // vae.num_classes)
            grids[name] = (vae.decode_class_rows(sampler.sample(per_row, vae, seed=cfg.seed).to(vae.device)), per_row)
        else:
            z = sampler.sample(cfg.num_samples, vae, seed=cfg.seed).to(vae.device)
            y = torch.full((len(z),), int(cfg.sample_class), device=z.device) if vae.conditional else None
            grids[name] = (vae.decode(z, y), 8)
    return grids


def save_picture(picture, path: Path, writer, tag: str, caption: str) -> None:
    """A grid tensor [C, H, W] or a matplotlib figure to ``path`` (PNG, atomically) and to TensorBoard."""
    if isinstance(picture, torch.Tensor):
        save_image_atomic(picture, path)
    else:
        with atomic_file(path) as f:
            picture.savefig(f, format="png")
    add_picture(writer, tag, picture, 0, caption)


def evaluate(cfg: DictConfig) -> dict:
    startup.check(cfg, "eval")
    pin_run_dir()
    L.seed_everything(cfg.seed, workers=True)
    tasks = checked_tasks(cfg.eval.tasks, "eval.tasks")
    module = load_module(cfg.ckpt_path)
    vae, run_data = module.vae, module.hparams.config["data"]
    check_sample_class(vae, cfg.sample_class)
    module.iw_samples, module.iw_chunk = int(cfg.eval.iw_samples), int(cfg.eval.iw_chunk)
    datamodule = datamodule_for(run_data, cfg)
    diagnostics = LatentDiagnostics()
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[diagnostics])
    metrics = {}
    if "nll" in tasks:
        metrics = {k: float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
        if "test" in diagnostics.kl_per_dim:
            metrics["test/kl_per_dim"] = diagnostics.kl_per_dim["test"].tolist()
    else:
        datamodule.setup("test")
        vae.to(trainer.strategy.root_device)
    if trainer.global_rank != 0:  # under DDP the metrics are already reduced; rank 0 writes the files
        return metrics

    out = Path(cfg.paths.output_dir)
    vae.eval()
    with torch.no_grad():
        x, y = datamodule.examples(cfg.num_reconstructions, "test")
        x, y = x.to(vae.device), y.to(vae.device)
        recon = vae.reconstruct(x, y)
    save_image_atomic(make_grid(torch.cat([x, recon]).cpu(), nrow=len(x), pad_value=0.5), out / "reconstructions.png")
    samplers = fitted_samplers(vae, instantiate(cfg.sampler), datamodule, cfg.seed)
    for name, (images, per_row) in sample_grids(vae, cfg, samplers).items():
        save_image_atomic(make_grid(images.cpu(), nrow=per_row, pad_value=0.5), out / f"samples_{name}.png")
    runs = {task: instantiate(cfg[group]) for task, group in (("samples", "sample_quality"), ("completion", "completion"),
                                                               ("representation", "representation"),
                                                               ("disentanglement", "disentanglement"))}
    task_metrics, pictures = run_applications(vae, datamodule, tasks, runs, samplers,
                                              instantiate(cfg.domain_classifier), cfg.seed)
    metrics.update(task_metrics)
    if pictures:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tensorboard")) as writer:
            for name, picture in pictures.items():
                save_picture(picture, out / f"{name}.png", writer, f"eval/{name}", CAPTIONS.get(name, name))
    if cfg.anomaly.ood_data or cfg.anomaly.holdout_class is not None:
        metrics.update(detect_anomalies(vae, run_data, cfg, datamodule, out))

    facts = RunFacts.of(module)
    record = {**metrics, "about": about(metrics, facts), "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
              "seed": cfg.seed, "iw_samples": cfg.eval.iw_samples}
    write_json_atomic(out / "metrics.json", record)
    print(table(metrics, facts), flush=True)
    log.info("wrote metrics.json and pictures to %s", out)
    return record


@refuse_missing_plugins  # before Hydra composes the config
@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    task_wrapper(evaluate)(cfg)


if __name__ == "__main__":
    main()
