"""Time vaelab's training against the classic PyTorch example loop, in one process.

    python scripts/bench_speed.py --experiment mnist_seed --device cpu --epochs 3

(a) classic: the loop of the PyTorch VAE example: a torchvision-style dataset that turns one
    sample at a time into a PIL image and then a tensor (ToTensor), torch's DataLoader (one
    worker and pinned memory on CUDA, none on the CPU, as the example sets them), the default
    Adam, ``loss.item()`` every step;
(b) vaelab: ``vaelab.train.train`` on the composed experiment config, the normal path.

Both train the same model (built from the experiment's config), on the same data, with the
same seed, batch size and number of epochs, and are then tested on the official test set (the
negative ELBO per image, one z sample). Seconds per epoch are the median over the epochs after
the first (which pays for warm-up). The last line is machine-readable:

    ratio=<b/a> vaelab_s_per_epoch=<..> classic_s_per_epoch=<..> vaelab_test_nelbo=<..> classic_test_nelbo=<..>
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import ToTensor

from vaelab.errors import instantiate
from vaelab.module import VAEModule
from vaelab.train import train


class PerSampleImages(Dataset):
    """What torchvision's MNIST/CIFAR10 datasets do per item: a PIL image, then ToTensor."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # HW or HWC uint8
        self.labels = labels.tolist()
        self.to_tensor = ToTensor()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.to_tensor(Image.fromarray(self.images[i])), self.labels[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_experiment(args, out: Path):
    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            f"experiment={args.experiment}", f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}",
            f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", f"seed={args.seed}", *args.override,
        ])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def classic(cfg, device: torch.device, epochs: int) -> tuple[list[float], float]:
    """The PyTorch example's loop around the experiment's model; returns epoch times and test loss."""
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    config = OmegaConf.to_container(cfg, resolve=True)
    config["compile"] = False
    model = VAEModule.from_config(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
    train_set = datamodule.train_set
    loader = DataLoader(PerSampleImages(train_set.images, train_set.labels), batch_size=cfg.data.batch_size,
                        shuffle=True, num_workers=1 if device.type == "cuda" else 0,
                        pin_memory=device.type == "cuda")
    times = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        model.train()
        train_loss = 0.0
        for x, _ in loader:
            x = x.to(device)
            optimizer.zero_grad()
            loss = model.terms(x).loss
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        sync(device)
        times.append(time.perf_counter() - start)
        print(f"classic epoch {len(times)}: {times[-1]:.2f} s, train loss {train_loss / len(loader):.2f}", flush=True)
    test_set = datamodule.test_set
    test_loader = DataLoader(PerSampleImages(test_set.images, test_set.labels), batch_size=cfg.data.batch_size)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, _ in test_loader:
            x = x.to(device)
            total += model.terms(x).nelbo.item() * len(x)
    return times, total / len(test_set)


class EpochTimer(L.Callback):
    """Wall time of each training epoch (including its validation), synchronized with the device."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        sync(pl_module.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.times.append(time.perf_counter() - self.start)
        print(f"vaelab epoch {len(self.times)}: {self.times[-1]:.2f} s", flush=True)


def vaelab_run(cfg) -> tuple[list[float], float]:
    timer = EpochTimer()
    metrics = train(cfg, extra_callbacks=[timer])
    return timer.times, metrics["test/nelbo"]


def seconds_per_epoch(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="mnist_seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-classic", action="store_true", help="time vaelab only (throughput figures)")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for vaelab's run, e.g. trainer.precision=bf16-mixed")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, lightning {L.__version__}, threads {torch.get_num_threads()}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_experiment(args, Path(tmp))
        if not args.skip_classic:
            classic_times, classic_nelbo = classic(cfg.copy(), device, args.epochs)
        vaelab_times, vaelab_nelbo = vaelab_run(cfg)
        dm = instantiate(cfg.data)
        dm.setup("fit")
        n_train = len(dm.train_set)

    v = seconds_per_epoch(vaelab_times)
    print(f"vaelab: {v:.3f} s/epoch, {n_train / v:,.0f} images/s, test nelbo {vaelab_nelbo:.2f}")
    if args.skip_classic:
        print(f"vaelab_s_per_epoch={v:.4f} vaelab_images_per_s={n_train / v:.0f} vaelab_test_nelbo={vaelab_nelbo:.3f}")
        return
    c = seconds_per_epoch(classic_times)
    print(f"classic: {c:.3f} s/epoch, {n_train / c:,.0f} images/s, test nelbo {classic_nelbo:.2f}")
    print(f"ratio={v / c:.4f} vaelab_s_per_epoch={v:.4f} classic_s_per_epoch={c:.4f} "
          f"vaelab_test_nelbo={vaelab_nelbo:.3f} classic_test_nelbo={classic_nelbo:.3f}")


if __name__ == "__main__":
    sys.exit(main())
