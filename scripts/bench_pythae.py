"""vaelab's whole epoch side by side with pythae's, on the same job and the same bits.

The job: an MLP VAE 784-400-40 (ReLU; Bernoulli likelihood), statically binarized MNIST split
55,000 / 5,000 / 10,000, Adam 1e-3, batch 128, 5 epochs, on the CPU. Two steps, because pythae
lives in its own virtual environment (it pins older packages than vaelab's):

    # 1. with vaelab's environment: the binarized splits, exactly as vaelab's data module serves them
    python scripts/bench_pythae.py export --out /tmp/mnist_static.pt
    # 2. with a separate environment holding pythae (python -m venv /tmp/pythae && /tmp/pythae/bin/pip install pythae)
    /tmp/pythae/bin/python scripts/bench_pythae.py pythae --data /tmp/mnist_static.pt [--nll]
    # vaelab on the same job, whole epochs (bench_speed's whole_epoch_s):
    python scripts/bench_speed.py --whole-epoch --skip-classic --skip-floor --epochs 5 $(python scripts/bench_pythae.py overrides)

pythae runs its own ``TrainingPipeline``-equivalent (``BaseTrainer``: its DataLoader over the
tensors, its progress bars and console metrics, the evaluation set after every epoch, a copy of
the best model, the final model saved); seconds per epoch are taken from one epoch's start to the
next's (``on_epoch_begin``) and the median of epochs 2 to 5 is printed as
``pythae_whole_epoch_s=``. ``--nll`` adds pythae's IWAE estimate of the test NLL (``get_nll``,
500 samples), to check that both reach the same model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

# vaelab's side of the job: the overrides of `python -m vaelab.train` (also bench_speed's)
OVERRIDES = [
    "data=mnist", "data.binarize=static", "data.val_size=5000", "data.batch_size=128",
    "model=mlp", "model.latent_dim=40", "model.encoder.hidden=[400]", "model.decoder.hidden=[400]",
    "likelihood=bernoulli", "optimizer=adam", "optimizer.lr=1e-3", "trainer.max_epochs=5",
]


def export(out: str) -> None:
    """The three splits as float tensors of 0s and 1s [N, 1, 28, 28] (vaelab's static binarization)."""
    import torch
    from hydra import compose, initialize_config_module

    from vaelab.errors import instantiate

    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        cfg = compose("train", overrides=[o for o in OVERRIDES if o.startswith("data")])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    datamodule.setup("test")
    splits = {name: getattr(datamodule, f"{name}_set").images.float().div(255)
              for name in ("train", "val", "test")}
    print({name: tuple(x.shape) for name, x in splits.items()})
    torch.save(splits, out)


def run_pythae(data: str, nll: bool) -> None:
    import torch
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 400), torch.nn.ReLU())
            self.mu, self.logvar = torch.nn.Linear(400, 40), torch.nn.Linear(400, 40)

        def forward(self, x):
            h = self.net(x)
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(40, 400), torch.nn.ReLU(), torch.nn.Linear(400, 784),
                                           torch.nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).reshape(-1, 1, 28, 28))

    class EpochClock(TrainingCallback):
        def __init__(self):
            self.starts = []

        def on_epoch_begin(self, training_config, **kwargs):
            self.starts.append(time.perf_counter())

        def on_train_end(self, training_config, **kwargs):
            self.starts.append(time.perf_counter())

    splits = torch.load(data)
    torch.manual_seed(42)
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=40, reconstruction_loss="bce")
    model = VAE(config, encoder=Encoder(), decoder=Decoder())
    clock = EpochClock()
    with tempfile.TemporaryDirectory() as out:
        trainer_config = BaseTrainerConfig(output_dir=out, num_epochs=5, learning_rate=1e-3, optimizer_cls="Adam",
                                           per_device_train_batch_size=128, per_device_eval_batch_size=128,
                                           no_cuda=True, seed=42)
        train, val = (BaseDataset(splits[name], torch.zeros(len(splits[name]))) for name in ("train", "val"))
        trainer = BaseTrainer(model, train, val, trainer_config, callbacks=[clock])
        trainer.train()
    epochs = [b - a for a, b in zip(clock.starts, clock.starts[1:])]
    print("pythae epochs (s):", " ".join(f"{t:.2f}" for t in epochs))
    line = {"pythae_whole_epoch_s": statistics.median(epochs[1:]), "threads": torch.get_num_threads()}
    if nll:
        model.eval()
        line["pythae_test_nll_iw500"] = model.get_nll(splits["test"], n_samples=500, batch_size=500)
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("export", help="write the binarized splits (vaelab's environment)").add_argument(
        "--out", required=True)
    run = commands.add_parser("pythae", help="train pythae on them (pythae's environment)")
    run.add_argument("--data", required=True)
    run.add_argument("--nll", action="store_true", help="also pythae's IWAE-500 test NLL")
    commands.add_parser("overrides", help="print vaelab's overrides for the same job")
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.out)
    elif args.command == "pythae":
        run_pythae(args.data, args.nll)
    else:
        print(" ".join(OVERRIDES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
