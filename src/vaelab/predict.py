"""Apply a trained model to your own images:
``python -m vaelab.predict ckpt_path=... input=... task=encode|reconstruct|score|sample`` (``vaelab-predict``).

``input`` is a folder of images (searched recursively; each named by its path in the folder), an
image file, a ``.npy``/``.npz`` file of images (``vaelab.data.arrays``, with the ``.npz``'s labels;
each named by its index) or a dataset name (its test split: ``mnist``, ``fashion_mnist``,
``cifar10``, ...). Every input goes through the model's transform (``vae.transform``,
``vaelab.data.transform.ImageTransform``: channels, size, binarization as in training), then,
``predict.batch_size`` images at a time, through ``VAEModule.predict_step`` on the device of
``trainer=``. The task writes into the run folder (``outputs/predict/runs/<time>/``):

- ``encode``: ``latents.npz``, the Gaussian posterior of each image (``mean`` and ``logvar``
  [N, D], as ``VAE.encode`` gives it), with ``names`` [N] and, where known, ``labels`` [N];
- ``reconstruct``: ``reconstructions_<k>.png``, grids of ``predict.grid_size`` inputs (top row)
  above their reconstructions E[x | z = E[z|x]];
- ``score``: ``scores.csv``, per image its name, ``nelbo`` (the negative ELBO, one z) and ``nll_iw``
  (the IWAE estimate of -log p(x) with ``predict.iw_samples`` samples), both in nats: the higher, the
  less the model expects the image (an anomaly score);
- ``sample``: ``predict.num_samples`` images decoded from z ~ p(z) (drawn with ``seed``) as
  ``samples/<i>.png`` and ``samples.npy`` (float [N, C, H, W] in [0, 1]).

A conditional model needs labels: a dataset's or the ``.npz``'s, or ``predict.label`` for every
image (samples then cycle through the classes unless ``predict.label`` is set).
"""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset
from torchvision.utils import make_grid

from vaelab.checkpoints import load_module
from vaelab.data import arrays
from vaelab.data.sources import DATASET_NAMES, load_dataset
from vaelab.data.transform import ImageTransform, image_files
from vaelab.entry import log, pin_run_dir, task_wrapper
from vaelab.errors import ConfigError, check_integer, instantiate
from vaelab.files import atomic_file, save_image_atomic
from vaelab.plugins import refuse_missing_plugins

TASKS = ("encode", "reconstruct", "score", "sample")


def read_input(cfg: DictConfig, transform: ImageTransform) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """The images of ``cfg.input`` as the model's input, their labels (or None) and names."""
    if cfg.input is None:
        raise ConfigError(f"task={cfg.task} needs input=<a folder of images, a .npy/.npz file or a dataset name>")
    source = str(cfg.input)
    path = Path(source).expanduser()
    if path.suffix in (".npy", ".npz"):
        images, labels = arrays.read(path)
        return transform(images), None if labels is None else torch.from_numpy(labels).long(), _indices(len(images))
    if path.exists():
        files = image_files(path)
        root = path if path.is_dir() else path.parent
        return transform(files), None, [str(f.relative_to(root)) for f in files]
    if source in DATASET_NAMES:
        data = load_dataset(source, cfg.data.root, [cfg.data.mirror, *cfg.data.extra_mirrors], cfg.data.download)
        split = data.test if data.test is not None else data.train
        return transform(split.images), split.labels, _indices(len(split.labels))
    raise ConfigError(f"input={source} is neither a folder or file of images, a .npy/.npz file nor a dataset name "
                      f"({', '.join(DATASET_NAMES)})")


def _indices(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def labels_for(vae, cfg: DictConfig, n: int, known: torch.Tensor | None) -> torch.Tensor:
    """The labels the model receives: ``predict.label``, else the input's, else -1 (unknown); a
    conditional model must get a class for every image (M2 scores without one)."""
    if cfg.predict.label is not None:
        if not 0 <= int(cfg.predict.label) < vae.num_classes:
            raise ConfigError(f"predict.label={cfg.predict.label} is not a class: choose 0..{vae.num_classes - 1}")
        return torch.full((n,), int(cfg.predict.label))
    if cfg.task == "sample" and vae.conditional:
        return torch.arange(n) % vae.num_classes
    labels = torch.full((n,), -1) if known is None else known
    if vae.conditional and not (cfg.task == "score" and vae.semi_supervised):
        if known is None:
            raise ConfigError(f"this model is conditional (model.conditional=true): give predict.label=<class> or an "
                              f"input with labels (a dataset, an .npz with 'labels') for task={cfg.task}")
        if int(labels.max()) >= vae.num_classes:
            raise ConfigError(f"the input has label {int(labels.max())}, but the model knows {vae.num_classes} classes")
    return labels


def write_outputs(task: str, results: dict[str, torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor,
                  names: list[str], cfg: DictConfig, out: Path) -> str:
    """Write the task's files into ``out``; returns what was written, in words."""
    n = len(names)
    if task == "encode":
        extra = {"labels": labels.numpy()} if (labels >= 0).all() else {}
        with atomic_file(out / "latents.npz") as f:
            np.savez(f, mean=results["mean"].numpy(), logvar=results["logvar"].numpy(), names=np.array(names), **extra)
        return f"latents.npz (posterior means and log-variances of {n} images, {results['mean'].shape[1]} latents)"
    if task == "reconstruct":
        size = int(cfg.predict.grid_size)
        for k, start in enumerate(range(0, n, size)):
            pair = torch.cat([inputs[start:start + size], results["reconstruction"][start:start + size]])
            save_image_atomic(make_grid(pair, nrow=min(size, n - start), pad_value=0.5), out / f"reconstructions_{k:03d}.png")
        return f"reconstructions_*.png ({n} images above their reconstructions, {size} per grid)"
    if task == "score":
        with atomic_file(out / "scores.csv", "w") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "nelbo", "nll_iw"])
            writer.writerows(zip(names, results["nelbo"].tolist(), results["nll_iw"].tolist(), strict=True))
        return (f"scores.csv ({n} images: mean nelbo {results['nelbo'].mean():.2f} nats, mean nll_iw "
                f"{results['nll_iw'].mean():.2f} nats with {cfg.predict.iw_samples} samples)")
    images = results["image"]
    for i, image in enumerate(images):
        save_image_atomic(image, out / "samples" / f"{i:05d}.png")
    with atomic_file(out / "samples.npy") as f:
        np.save(f, images.numpy())
    return f"samples.npy and samples/*.png ({n} images from the prior)"


def predict(cfg: DictConfig) -> dict:
    pin_run_dir()
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task} is not one of {', '.join(TASKS)}")
    for key in ("batch_size", "iw_samples", "iw_chunk", "num_samples", "grid_size"):
        check_integer(f"predict.{key}", cfg.predict[key])
    L.seed_everything(cfg.seed, workers=True)
    module = load_module(cfg.ckpt_path)
    module.predict_task, module.compile_setting = cfg.task, False
    module.iw_samples, module.iw_chunk = int(cfg.predict.iw_samples), int(cfg.predict.iw_chunk)
    vae = module.vae
    if cfg.task == "sample":
        n = int(cfg.predict.num_samples)
        inputs = vae.sample_prior(n, torch.Generator().manual_seed(int(cfg.seed))).detach()
        known, names = None, _indices(n)
    else:
        inputs, known, names = read_input(cfg, ImageTransform.of_run(module.hparams.config))
    labels = labels_for(vae, cfg, len(inputs), known)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    if trainer.world_size > 1:
        raise ConfigError("vaelab.predict runs on one device: use trainer=cpu or trainer=gpu (not ddp)")
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=int(cfg.predict.batch_size), shuffle=False)
    batches = trainer.predict(module, dataloaders=loader)
    results = {name: torch.cat([b[name] for b in batches]) for name in batches[0]}
    out = Path(cfg.paths.output_dir)
    written = write_outputs(cfg.task, results, inputs, labels, names, cfg, out)
    log.info("wrote %s to %s", written, out)
    return {name: value.numpy() for name, value in results.items()}


@refuse_missing_plugins  # before Hydra composes the config
@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    task_wrapper(predict)(cfg)


if __name__ == "__main__":
    main()
