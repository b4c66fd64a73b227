"""vaelab from Python: train a tiny VAE on MNIST, save it, load it back and use every method.

    python examples/python_api.py [--out outputs/example] [--steps 300]

Training: the config is composed with Hydra's compose API (the same config files as
``python -m vaelab.train``, with overrides), the data module and the ``VAEModule`` are built from
it, and Lightning trains a few hundred steps on the CPU (well under a minute). MNIST is read from
``$VAELAB_DATA_MIRROR`` or ``data.root`` as for training (see the README's Offline data).

Using: ``vaelab.load`` gives the trained ``VAE`` (a plain ``torch.nn.Module``, no Hydra and no
Lightning needed) with its data transform, and the script calls ``encode``, ``decode``,
``sample``, ``reconstruct``, ``interpolate``, ``elbo_terms`` and ``log_likelihood``, writes
pictures to ``--out`` and prints a JSON summary as its last line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torchvision.utils import save_image

import vaelab
from vaelab.errors import instantiate
from vaelab.module import VAEModule


def train_tiny_vae(out: Path, steps: int) -> tuple[Path, L.LightningDataModule]:
    """Train an MLP VAE (784-256-8) for ``steps`` Adam steps; returns its checkpoint and the data."""
    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            f"paths.output_dir={out}",  # (a Hydra run would set it; compose alone does not)
            "model.latent_dim=8", "model.encoder.hidden=[256]", "model.decoder.hidden=[256]",
            "data.val_size=0", "data.batch_size=128",
        ])
    datamodule = instantiate(cfg.data)
    module = VAEModule.from_config(OmegaConf.to_container(cfg, resolve=True))  # the checkpoint keeps this config
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(out / "tiny.ckpt")
    return out / "tiny.ckpt", datamodule


@torch.no_grad()
def use(vae, images) -> dict:
    """Every method of a trained VAE on ``images`` (your own: here uint8 MNIST digits [N, 28, 28])."""
    x = vae.transform(images)                                   # float [N, 1, 28, 28] in [0, 1]
    posterior = vae.encode(x)                                   # q(z|x): .mean, .std, .logvar [N, 8]
    decoded = vae.decode(posterior.mean)                        # E[x|z] at the posterior means
    reconstructions = vae.reconstruct(x)                        # the same, in one call
    samples = vae.sample(16, generator=torch.Generator().manual_seed(0))   # 16 new digits
    path = vae.interpolate(x[:1], x[1:2], steps=8)              # [1, 8, 1, 28, 28]: digit 0 morphing into digit 1
    terms = vae.elbo_terms(x)                                   # per image: .recon + .kl = .nelbo (nats)
    log_px = vae.log_likelihood(x, k=500)                       # IWAE estimate of log p(x) per image (nats)
    return {"x": x, "posterior": posterior, "decoded": decoded, "reconstructions": reconstructions,
            "samples": samples, "path": path, "terms": terms, "log_px": log_px}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/example"))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    ckpt, datamodule = train_tiny_vae(out, args.steps)
    vae = vaelab.load(ckpt)                                      # eval mode, on the CPU
    images = datamodule.test_set.images[:16, 0].numpy()          # uint8 [16, 28, 28], as a user would hold them
    r = use(vae, images)

    save_image(torch.cat([r["x"], r["reconstructions"]]), out / "reconstructions.png", nrow=16)
    save_image(r["samples"], out / "samples.png", nrow=8)
    save_image(r["path"][0], out / "interpolation.png", nrow=8)
    summary = {
        "steps": args.steps, "checkpoint": str(ckpt), "latent_dim": vae.latent_dim,
        "nelbo": r["terms"].nelbo.mean().item(), "recon": r["terms"].recon.mean().item(),
        "kl": r["terms"].kl.mean().item(), "nll_iw": -r["log_px"].mean().item(),
        "decode_equals_reconstruct": bool(torch.equal(r["decoded"], r["reconstructions"])),
        "first_latent_mean": r["posterior"].mean[0].tolist(),
        "interpolation_ends": [(r["path"][0, 0] - r["reconstructions"][0]).abs().max().item(),
                               (r["path"][0, -1] - r["reconstructions"][1]).abs().max().item()],
        "sample_range": [r["samples"].min().item(), r["samples"].max().item()],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
