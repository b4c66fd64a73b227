"""Time vaelab's training against the classic PyTorch example loop and a plain loop, in one process.

    python scripts/bench_speed.py --experiment mnist_seed --device cpu --epochs 3
    python scripts/bench_speed.py --whole-epoch --device cpu --epochs 3      # the default experiment

(a) classic: the loop of the PyTorch VAE example: a torchvision-style dataset that turns one
    sample at a time into a PIL image and then a tensor (ToTensor), torch's DataLoader (one
    worker and pinned memory on CUDA, none on the CPU, as the example sets them), the default
    Adam, ``loss.item()`` every step;
(b) floor: a plain PyTorch loop over the same on-device batches (``DeviceBatches``, the same
    shuffling), the same model and objective, the configured (fused) optimizer, nothing else:
    no Lightning, no logging, no checkpoints: what vaelab's training loop cannot beat. It trains
    on its own copy of the model, in tenths of an epoch run between vaelab's steps (after each
    tenth of vaelab's epoch, outside vaelab's time), so that a machine whose speed drifts within
    seconds slows both alike;
(c) vaelab: ``vaelab.train.train`` on the composed experiment config, the normal path, with its
    progress bar, logging, checkpoints and pictures on.

All train the same model (built from the experiment's config), on the same data, with the same
seed, batch size and number of epochs; (a) and (c) are then tested on the official test set (the
negative ELBO per image, one z sample). Seconds per epoch are the median over the epochs after
the first (which pays for warm-up), ``ratio_floor`` the median of the per-epoch ratios; vaelab's
are its training steps' time (epoch start to its last batch), and with ``--whole-epoch`` also the
whole epoch (training, validation, callbacks and checkpoints: from one epoch's start to the
next's, less the floor's steps), whose share outside the training steps is ``val_share`` (the
median of the epochs' shares). The last line is machine-readable:

    ratio=<c/a> ratio_floor=<c/b> vaelab_s_per_epoch=<..> floor_s_per_epoch=<..> classic_s_per_epoch=<..> ...
    ... whole_epoch_s=<..> val_share=<..>   (with --whole-epoch)
"""

from __future__ import annotations

import argparse
import itertools
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

from vaelab.data.device_loader import DeviceBatches
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
    experiment = [f"experiment={args.experiment}"] if args.experiment else []
    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True, overrides=[
            *experiment, f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}",
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


class Floor:
    """A plain loop over the same on-device batches (the same order), the same model, objective
    and optimizer, and nothing else: ``start_epoch(i)`` shuffles epoch i's batches, ``run(n)``
    trains the next n of them (all that are left: ``None``) and returns its seconds."""

    def __init__(self, cfg, device: torch.device):
        L.seed_everything(cfg.seed)
        self.cfg, self.device = cfg, device
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        self.model = VAEModule.from_config(OmegaConf.to_container(cfg, resolve=True)).to(device)
        self.model.objective.setup(len(datamodule.train_set), datamodule.num_labelled)
        optimizer = self.model.configure_optimizers()
        self.optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
        self.train = datamodule.train_set
        self.images, self.labels = self.train.images.to(device), self.train.labels.to(device)
        self.batches = iter(())
        self.rng = torch.get_rng_state()  # its own noise: vaelab's run draws what it draws without the floor

    def start_epoch(self, epoch: int) -> None:
        self.batches = iter(DeviceBatches(self.images, self.labels, self.cfg.data.batch_size, shuffle=True,
                                          seed=self.cfg.seed, current_epoch=lambda: epoch,
                                          binarize=self.train.binarize))

    def run(self, steps: int | None) -> float:
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.set_rng_state(self.rng)
            sync(self.device)
            start = time.perf_counter()
            self.model.train()
            for x, y in itertools.islice(self.batches, steps):
                loss = self.model.terms(x, y).loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            sync(self.device)
            seconds = time.perf_counter() - start
            self.rng = torch.get_rng_state()
        return seconds


class EpochTimer(L.Callback):
    """Per epoch: the training steps' time (the epoch's start to its last batch's end) and the whole
    epoch's (one epoch's start to the next's, or to the end of training: validation, callbacks and
    checkpoints included), synchronized with the device. With a ``floor``, the plain loop trains
    the same epoch in ``chunks`` parts between vaelab's steps (after every tenth of vaelab's epoch,
    outside both times), so that both loops see the same machine on one whose speed drifts within
    seconds (``ratio_floor`` is the median of the epochs' ratios)."""

    def __init__(self, floor: Floor | None = None, chunks: int = 10):
        self.floor, self.chunks = floor, chunks
        self.steps: list[float] = []
        self.whole: list[float] = []
        self.floor_steps: list[float] = []

    def _now(self, pl_module) -> float:
        sync(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        now = self._now(pl_module)
        if self.steps:
            self.whole.append(now - self.epoch_start - self.floor_seconds)
        self.epoch_start = self.start = now
        self.step_seconds = self.floor_seconds = 0.0
        if self.floor is not None:
            self.floor.start_epoch(trainer.current_epoch)
            self.chunk = max(trainer.num_training_batches // self.chunks, 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = batch_idx + 1 == trainer.num_training_batches
        if not (last or (self.floor is not None and (batch_idx + 1) % self.chunk == 0)):
            return
        now = self._now(pl_module)
        self.step_seconds += now - self.start
        if self.floor is not None:
            self.floor_seconds += self.floor.run(None if last else self.chunk)
            now = self._now(pl_module)
        self.start = now
        if last:
            self.steps.append(self.step_seconds)
            print(f"vaelab epoch {len(self.steps)}: {self.step_seconds:.2f} s of training steps", flush=True)
            if self.floor is not None:
                self.floor_steps.append(self.floor_seconds)
                print(f"floor epoch {len(self.floor_steps)}: {self.floor_seconds:.2f} s", flush=True)

    def on_train_end(self, trainer, pl_module):
        self.whole.append(self._now(pl_module) - self.epoch_start - self.floor_seconds)


def vaelab_run(cfg, floor: Floor | None) -> tuple[EpochTimer, float]:
    timer = EpochTimer(floor)
    metrics = train(cfg, extra_callbacks=[timer])
    return timer, metrics["test/nelbo"]


def seconds_per_epoch(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=None, help="an experiment= option (default: the default experiment)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-classic", action="store_true", help="leave out the classic loop")
    parser.add_argument("--skip-floor", action="store_true", help="leave out the plain loop")
    parser.add_argument("--whole-epoch", action="store_true",
                        help="also time whole epochs (validation, callbacks, checkpoints): val_share")
    parser.add_argument("override", nargs="*", help="extra Hydra overrides for vaelab's run, e.g. trainer.precision=bf16-mixed")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, lightning {L.__version__}, threads {torch.get_num_threads()}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_experiment(args, Path(tmp))
        results = {}
        if not args.skip_classic:
            classic_times, classic_nelbo = classic(cfg.copy(), device, args.epochs)
            results["classic_s_per_epoch"] = seconds_per_epoch(classic_times)
        timer, vaelab_nelbo = vaelab_run(cfg, None if args.skip_floor else Floor(cfg.copy(), device))
        dm = instantiate(cfg.data)
        dm.setup("fit")
        n_train = len(dm.train_set)

    v = seconds_per_epoch(timer.steps)
    print(f"vaelab: {v:.3f} s/epoch of training steps, {n_train / v:,.0f} images/s, test nelbo {vaelab_nelbo:.2f}")
    line = {}
    if "classic_s_per_epoch" in results:
        c = results["classic_s_per_epoch"]
        print(f"classic: {c:.3f} s/epoch, {n_train / c:,.0f} images/s, test nelbo {classic_nelbo:.2f}")
        line["ratio"] = v / c
    if timer.floor_steps:
        f = results["floor_s_per_epoch"] = seconds_per_epoch(timer.floor_steps)
        print(f"floor: {f:.3f} s/epoch, {n_train / f:,.0f} images/s")
        line["ratio_floor"] = seconds_per_epoch([a / b for a, b in zip(timer.steps, timer.floor_steps)])
    line.update(vaelab_s_per_epoch=v, vaelab_images_per_s=n_train / v, **results)
    if args.whole_epoch:
        whole = seconds_per_epoch(timer.whole)
        outside = seconds_per_epoch([w - s for w, s in zip(timer.whole, timer.steps)])
        print(f"whole epoch: {whole:.3f} s, of which {outside:.3f} s outside the training steps")
        line.update(whole_epoch_s=whole,
                    val_share=seconds_per_epoch([(w - s) / w for w, s in zip(timer.whole, timer.steps)]))
    line["vaelab_test_nelbo"] = vaelab_nelbo
    if "classic_s_per_epoch" in results:
        line["classic_test_nelbo"] = classic_nelbo
    print(" ".join(f"{k}={val:.4f}" if isinstance(val, float) else f"{k}={val}" for k, val in line.items()))


if __name__ == "__main__":
    sys.exit(main())
