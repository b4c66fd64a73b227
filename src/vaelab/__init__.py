"""vaelab: Variational Autoencoder experiments on PyTorch Lightning and Hydra.

From Python: ``vae = vaelab.load("outputs/train/runs/<run>")`` gives a trained ``VAE``.
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """The trained ``vaelab.vae.VAE`` of a run folder or ``.ckpt`` file, in eval mode on ``device``."""
    from vaelab.checkpoints import load as load_checkpoint

    return load_checkpoint(path, device)
