"""Evaluate a checkpoint on the test set: ``python -m vaelab.eval ckpt_path=...`` (``vaelab-eval``).

Computes ``test/nelbo``, ``test/recon``, ``test/kl``, ``test/nll_iw`` (IWAE with
``eval.iw_samples`` samples), ``test/bpd`` (discrete likelihoods), ``test/active_units``,
``test/mi`` and ``test/kl_per_dim``; with ``anomaly.ood_data`` or ``anomaly.holdout_class``
also the anomaly-detection AUROCs. Writes ``metrics.json``, ``samples_prior.png`` (decoded prior
samples; with ``sampler=gmm`` also ``samples_gmm.png``, from a Gaussian mixture fitted to the
training set's posterior means; conditional models: one row per class, or ``sample_class``),
``reconstructions.png`` (test images above their reconstructions) and, for anomaly
detection, ``anomaly_<score>.png`` histograms and a TensorBoard log into the eval run folder,
and prints the metrics.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid

from vaelab import anomaly, startup
from vaelab.checkpoint_io import read_checkpoint
from vaelab.data.device_loader import DeviceBatches
from vaelab.entry import log, pin_run_dir, task_wrapper
from vaelab.errors import ConfigError, instantiate
from vaelab.files import save_image_atomic, write_json_atomic
from vaelab.module import VAEModule
from vaelab.samplers import PriorSampler


def load_checkpoint(path: str) -> VAEModule:
    read_checkpoint(path)  # a missing, truncated or foreign file: one line
    return VAEModule.load_from_checkpoint(path, map_location="cpu")


def datamodule_for(model: VAEModule, cfg: DictConfig, **overrides):
    """The checkpoint's dataset, read from where this machine keeps it (``cfg.data``)."""
    data_cfg = {**model.hparams.config["data"], **{k: v for k, v in cfg.data.items() if v is not None}, **overrides}
    return instantiate(OmegaConf.create(data_cfg))


def detect_anomalies(model: VAEModule, cfg: DictConfig, datamodule, out: Path) -> dict[str, float]:
    """AUROC of the nelbo and IWAE scores for in-distribution against out-of-distribution test images."""
    settings = cfg.anomaly
    if settings.ood_data and settings.holdout_class is not None:
        raise ConfigError("give anomaly.ood_data or anomaly.holdout_class, not both")
    k, chunk = cfg.eval.iw_samples or 100, cfg.eval.iw_chunk
    inliers = anomaly.score_images(model, datamodule.test_dataloader(), k, chunk)
    if settings.ood_data:
        mirrors = [*model.hparams.config["data"].get("extra_mirrors", []), *settings.ood_extra_mirrors]
        other = datamodule_for(model, cfg, name=settings.ood_data, extra_mirrors=mirrors, exclude_classes=[])
        other.setup("test")
        outliers = anomaly.score_images(model, other.test_dataloader(), k, chunk)
        names = (model.hparams.config["data"]["name"], settings.ood_data)
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


@torch.no_grad()
def training_latents(model: VAEModule, datamodule, seed: int) -> torch.Tensor:
    """Posterior means of every training image [N, D] (conditional models: given the true label)."""
    datamodule.setup("fit")
    train = datamodule.train_set
    batches = DeviceBatches(train.images, train.labels, datamodule.eval_batch_size, shuffle=False, seed=seed,
                            binarize=train.binarize)
    return torch.cat([model.posterior(x.to(model.device), y.to(model.device)).mu.float().cpu() for x, y in batches])


def check_sample_class(model: VAEModule, sample_class: int | None) -> None:
    if sample_class is None:
        return
    if not model.conditional:
        raise ConfigError(f"sample_class={sample_class} needs a conditional model (model.conditional=true); "
                          "this checkpoint's model is unconditional: leave sample_class=null")
    if not 0 <= sample_class < model.num_classes:
        raise ConfigError(f"sample_class={sample_class} is not a class: choose 0..{model.num_classes - 1}")


@torch.no_grad()
def sample_grids(model: VAEModule, cfg: DictConfig, datamodule) -> dict[str, tuple[torch.Tensor, int]]:
    """{sampler name: (decoded samples, images per row)} for the prior and, with sampler=gmm, the
    mixture fitted to the training latents. A conditional model decodes one row per class (the
    same draws in every row), or ``sample_class`` alone."""
    samplers = {"prior": PriorSampler()}
    chosen = instantiate(cfg.sampler)
    if chosen.needs_fit:
        chosen.fit(training_latents(model, datamodule, cfg.seed))
        samplers[HydraConfig.get().runtime.choices.sampler] = chosen
    grids = {}
    for name, sampler in samplers.items():
        if model.conditional and cfg.sample_class is None:  # one row per class, the same draws in each
            per_row = max(1, cfg.num_samples // model.num_classes)
            grids[name] = (model.decode_class_rows(sampler.sample(per_row, model, seed=cfg.seed).to(model.device)),
                           per_row)
        else:
            z = sampler.sample(cfg.num_samples, model, seed=cfg.seed).to(model.device)
            y = torch.full((len(z),), int(cfg.sample_class), device=z.device) if model.conditional else None
            grids[name] = (model.decode_mean(z, y), 8)
    return grids


def evaluate(cfg: DictConfig) -> dict:
    startup.check(cfg, "eval")
    pin_run_dir()
    L.seed_everything(cfg.seed, workers=True)
    model = load_checkpoint(cfg.ckpt_path)
    check_sample_class(model, cfg.sample_class)
    model.iw_samples, model.iw_chunk = int(cfg.eval.iw_samples), int(cfg.eval.iw_chunk)
    datamodule = datamodule_for(model, cfg)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    metrics = {k: float(v) for k, v in trainer.test(model, datamodule=datamodule)[0].items()}
    metrics["test/kl_per_dim"] = model.kl_per_dim["test"].tolist()
    if trainer.global_rank != 0:  # under DDP the metrics are already reduced; rank 0 writes the files
        return metrics

    out = Path(cfg.paths.output_dir)
    model.eval()
    with torch.no_grad():
        x, y = datamodule.examples(cfg.num_reconstructions, "test")
        x, y = x.to(model.device), y.to(model.device)
        recon = model.decode_mean(model.posterior(x, y).mu, y)
    save_image_atomic(make_grid(torch.cat([x, recon]).cpu(), nrow=len(x), pad_value=0.5), out / "reconstructions.png")
    for name, (images, per_row) in sample_grids(model, cfg, datamodule).items():
        save_image_atomic(make_grid(images.cpu(), nrow=per_row, pad_value=0.5), out / f"samples_{name}.png")
    if cfg.anomaly.ood_data or cfg.anomaly.holdout_class is not None:
        metrics.update(detect_anomalies(model, cfg, datamodule, out))

    record = {**metrics, "ckpt_path": str(Path(cfg.ckpt_path).resolve()), "seed": cfg.seed,
              "iw_samples": cfg.eval.iw_samples}
    write_json_atomic(out / "metrics.json", record)
    for name, value in sorted(metrics.items()):
        if not isinstance(value, list):
            print(f"{name} = {value:.4f}")
    log.info("wrote metrics.json and pictures to %s", out)
    return record


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    task_wrapper(evaluate)(cfg)


if __name__ == "__main__":
    main()
