"""Reading vaelab checkpoints: each carries its run's resolved config, so it rebuilds its model alone.

- ``load(path, device)``: the ``VAE`` of a run folder or ``.ckpt`` file, in eval mode, with its
  data transform (``vae.transform``), for use from Python (``vaelab.load``);
- ``load_module(path)``: the whole ``VAEModule`` (objective, optimizer settings, evaluation
  settings), as ``vaelab.eval`` needs it;
- ``upgrade(checkpoint)``: checkpoints written before the model was split from the
  LightningModule (vaelab 0.1.0: ``likelihood``, ``posterior`` and ``prior`` as top-level config
  groups, the parts' parameters at the module's top level, the posterior family as ``flow``)
  are brought to the current layout, so they load and resume as before;
- ``carry_optimizer_steps(checkpoint, manual)``: the optimizer-step count of a checkpoint written
  on the other optimization path (automatic or manual), for a resume that goes on counting.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from vaelab.data.transform import ImageTransform
from vaelab.errors import VaelabError, instantiate
from vaelab.vae import VAE

# the VAE's parts as the LightningModule held them before the split -> their names in the VAE
_PARTS_BEFORE_SPLIT = {"encoder": "encoder", "decoder": "decoder", "likelihood": "likelihood", "flow": "posterior",
                       "prior": "prior", "ladder": "ladder", "classifier": "classifier"}


def _model_config_before_split(config: dict[str, Any]) -> dict[str, Any]:
    """The nested ``model`` config of the current layout for a config of vaelab 0.1.0."""
    model = dict(config["model"])
    data = config["data"]
    return {
        "_target_": "vaelab.vae.VAE", "shape": data["shape"], "num_classes": data.get("num_classes", 10),
        **model,
        "encoder": {**model["encoder"], "_partial_": True}, "decoder": {**model["decoder"], "_partial_": True},
        "likelihood": config["likelihood"], "posterior": config.get("posterior"), "prior": config.get("prior"),
    }


def upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint of an earlier layout to the current one, in place; returns it."""
    config = checkpoint.get("hyper_parameters", {}).get("config")
    if config is not None and isinstance(config.get("model"), dict) and "_target_" not in config["model"]:
        config["model"] = _model_config_before_split(config)
        for group in ("likelihood", "posterior", "prior"):
            config.pop(group, None)
    state = checkpoint.get("state_dict", {})
    for key in list(state):
        part, _, rest = key.partition(".")
        if part in _PARTS_BEFORE_SPLIT:
            state[f"vae.{_PARTS_BEFORE_SPLIT[part]}.{rest}"] = state.pop(key)
    return checkpoint


def checkpoint_file(path: str | Path, key: str = "ckpt_path") -> Path:
    """A ``.ckpt`` file, or a run folder's ``checkpoints/best.ckpt`` (else its ``last.ckpt``); ``key``
    is the setting named in errors."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise VaelabError(f"{key}={path} holds no checkpoints/best.ckpt or checkpoints/last.ckpt: pass a run folder "
                          "or a .ckpt file")
    if not path.is_file():
        raise VaelabError(f"checkpoint not found: {key}={path}; pass the path of a .ckpt file from a run folder "
                          "(e.g. outputs/train/runs/<time>/checkpoints/last.ckpt)")
    return path


def read(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint's contents in the current layout (on the CPU, tensors memory-mapped, so reading is
    cheap), or one line naming the setting ``key`` when the file is missing, truncated, or not a vaelab
    checkpoint."""
    path = checkpoint_file(path, key)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # a truncated zip, a foreign pickle, a text file: torch raises many kinds
        reason = str(err).split(". ")[0].splitlines()[0][:120] if str(err) else ""
        raise VaelabError(f"{key}={path} is not a checkpoint, or is truncated or corrupt ({type(err).__name__}: "
                          f"{reason}): use another .ckpt file of the run (last.ckpt or best.ckpt)") from err
    config = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict) or "state_dict" not in checkpoint:
        raise VaelabError(f"{key}={path} is not a vaelab checkpoint (it has no state_dict and saved config): "
                          "pass a .ckpt file from a vaelab run folder")
    return upgrade(checkpoint)


def load(path: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The trained ``VAE`` of a run folder or checkpoint, in eval mode on ``device``, with its data
    transform as ``vae.transform`` (``vaelab.data.transform.ImageTransform``: user images -> the
    model's input, float [N, C, H, W] in [0, 1] on the CPU)."""
    checkpoint = read(path)
    config = checkpoint["hyper_parameters"]["config"]
    vae: VAE = instantiate(config["model"])
    prefix = "vae."
    vae.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    vae.transform = ImageTransform.of_run(config)
    return vae.to(device).eval()


def load_module(path: str | Path):
    """The ``VAEModule`` of a checkpoint, its weights loaded (on the CPU)."""
    from vaelab.module import VAEModule

    checkpoint = read(path)
    module = VAEModule.from_config(checkpoint["hyper_parameters"]["config"])
    module.load_state_dict(checkpoint["state_dict"])
    return module


def carry_optimizer_steps(checkpoint: dict, manual: bool) -> None:
    """Lightning counts optimizer steps (global_step) in its automatic-optimization loop or in its
    manual one (``VAEModule.configure_model`` chooses): a checkpoint written on the other path has
    its count in the other loop, which is copied here so that a run resumed on either goes on
    counting. (The loop that counted last has the larger count: a run resumed on one path, then on
    the other, keeps its steps too.)"""
    loop = checkpoint.get("loops", {}).get("fit_loop")
    if not loop or "epoch_loop.manual_optimization.optim_step_progress" not in loop:
        return
    automatic = loop["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]
    manual_steps = loop["epoch_loop.manual_optimization.optim_step_progress"]
    source, target = (automatic, manual_steps) if manual else (manual_steps, automatic)
    if source["total"]["completed"] > target["total"]["completed"]:
        target.update(copy.deepcopy(source))
