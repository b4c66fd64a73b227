"""vaelab: Variational Autoencoder experiments on PyTorch Lightning and Hydra.

From Python: ``vae = vaelab.load("outputs/train/runs/<run>")`` gives a trained ``VAE``.
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """The trained ``vaelab.vae.VAE`` of a run folder or ``.ckpt`` file, in eval mode on ``device``,
    with its data transform as ``.transform``."""
    from vaelab.checkpoints import load as load_checkpoint

    return load_checkpoint(path, device)


def _from_data(name, path, what):
    """The ``${vaelab.from_data:...}`` resolver of the user-data configs (``vaelab.data.user_data``)."""
    from vaelab.data.user_data import from_data

    return from_data(name, path, what)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("vaelab.from_data"):
        OmegaConf.register_new_resolver("vaelab.from_data", _from_data, use_cache=True)


_register_resolvers()
