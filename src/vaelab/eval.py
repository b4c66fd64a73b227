"""Evaluate a checkpoint on the test set: ``python -m vaelab.eval ckpt_path=...`` (``vaelab-eval``).

Writes ``samples.png`` (decoded prior samples), ``reconstructions.png`` (test images above
their reconstructions) and ``metrics.json`` into the eval run folder, and prints the metrics.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid

from vaelab.entry import log, pin_run_dir, task_wrapper
from vaelab.errors import VaelabError, instantiate
from vaelab.files import save_image_atomic, write_json_atomic
from vaelab.module import VAEModule


def load_checkpoint(path: str) -> VAEModule:
    if not Path(path).is_file():
        raise VaelabError(f"checkpoint not found: ckpt_path={path}; pass the path of a .ckpt file from a run folder")
    try:
        return VAEModule.load_from_checkpoint(path, map_location="cpu")
    except (KeyError, TypeError, RuntimeError) as err:
        raise VaelabError(f"{path} is not a vaelab checkpoint or is corrupt ({type(err).__name__}: {err})") from err


def evaluate(cfg: DictConfig) -> dict:
    pin_run_dir()
    L.seed_everything(cfg.seed, workers=True)
    model = load_checkpoint(cfg.ckpt_path)
    data_cfg = {**model.hparams.config["data"], **{k: v for k, v in cfg.data.items() if v is not None}}
    datamodule = instantiate(OmegaConf.create(data_cfg))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    metrics = trainer.test(model, datamodule=datamodule)[0]

    out = Path(cfg.paths.output_dir)
    model.eval()
    with torch.no_grad():
        x, _ = datamodule.examples(cfg.num_reconstructions, "test")
        x = x.to(model.device)
        recon = model.decode_mean(model.posterior(x).mu)
        samples = model.decode_mean(torch.randn(cfg.num_samples, model.latent_dim, device=model.device))
    save_image_atomic(make_grid(torch.cat([x, recon]).cpu(), nrow=len(x), pad_value=0.5), out / "reconstructions.png")
    save_image_atomic(make_grid(samples.cpu(), nrow=8, pad_value=0.5), out / "samples.png")

    record = {**{k: float(v) for k, v in metrics.items()}, "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
              "seed": cfg.seed}
    write_json_atomic(out / "metrics.json", record)
    for name, value in sorted(metrics.items()):
        print(f"{name} = {value:.4f}")
    log.info("wrote metrics.json, samples.png and reconstructions.png to %s", out)
    return record


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    task_wrapper(evaluate)(cfg)


if __name__ == "__main__":
    main()
