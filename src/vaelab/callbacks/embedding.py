"""The latent space of test images, for TensorBoard's projector."""

from __future__ import annotations

import lightning as L
import torch

from vaelab.callbacks import epoch_end_step, tensorboard_writer
from vaelab.callbacks.callback import Callback
from vaelab.data.sources import class_names


class LatentEmbedding(Callback):
    """At the end of training, logs the posterior means mu(x) of the first ``num_images`` test
    images with their class names and thumbnails (the PROJECTOR tab in TensorBoard), at the step of the
    last epoch's scalars and pictures (``epoch_end_step``). TensorBoard's projector opens on a 3-D
    PCA without colours (colouring by label is a choice made in the tab: "Color by label"); the
    2-D picture coloured by label is ``latent/scatter`` (``LatentImages``)."""

    def __init__(self, num_images: int = 1000):
        self.num_images = num_images

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        x, y = trainer.datamodule.examples(self.num_images, "test")
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            mu = torch.cat([pl_module.vae.encode(xc.to(pl_module.device), yc.to(pl_module.device)).mu.cpu()
                            for xc, yc in zip(x.split(500), y.split(500), strict=True)])
        pl_module.train(was_training)
        names = class_names(trainer.datamodule.name, pl_module.vae.num_classes)
        writer.add_embedding(mu, metadata=[names[c] for c in y.tolist()], label_img=x,
                             global_step=epoch_end_step(trainer), tag="latent/test")
