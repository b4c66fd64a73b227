"""Pictures of what the VAE has learned, logged to TensorBoard at the end of every epoch (after validation)."""

from __future__ import annotations

import lightning as L
import torch
from torchvision.utils import make_grid

from vaelab.callbacks import tensorboard_writer


class LatentImages(L.Callback):
    """Four grids per epoch, for a fixed set of validation images (test images when there is no
    validation split) and fixed prior draws, so that the pictures of successive epochs compare:

    - ``images/reconstructions``: the inputs (top row) above E[x | z = mu(x)];
    - ``images/prior_samples``: E[x|z] for z ~ p(z) (conditional models: one row per class, the
      same z in every row, so each column shows one style across the classes);
    - ``images/interpolations``: each row decodes z = (1 - t) mu(a) + t mu(b), t from 0 to 1;
    - ``images/traversals``: each row moves one latent dimension of mu(x_0) from -r to r, for the
      dimensions whose posterior means vary most across ``ranking_images`` images (the ones the
      model uses most; a measure valid for every posterior and prior family).
    """

    def __init__(self, num_examples: int = 8, num_samples: int = 64, interpolation_steps: int = 10,
                 traversal_dims: int = 8, traversal_range: float = 3.0, traversal_steps: int = 11, seed: int = 0,
                 ranking_images: int = 500):
        self.num_examples = num_examples
        self.num_samples = num_samples
        self.interpolation_steps = interpolation_steps
        self.traversal_dims = traversal_dims
        self.traversal_range = traversal_range
        self.traversal_steps = traversal_steps
        self.seed = seed
        self.ranking_images = ranking_images

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for tag, images, nrow in self.grids(trainer.datamodule, pl_module.vae):
                writer.add_image(f"images/{tag}", make_grid(images.float().cpu(), nrow=nrow, pad_value=0.5),
                                 global_step=trainer.global_step)
        pl_module.train(was_training)

    def grids(self, datamodule, vae):
        """Yield (tag, images [N, C, H, W] in [0, 1], images per row) for each picture."""
        x, y = datamodule.examples(max(self.num_examples, self.ranking_images), "val")
        x, y = x.to(vae.device), y.to(vae.device)
        q = vae.encode(x, y)
        x, y, n = x[: self.num_examples], y[: self.num_examples], min(self.num_examples, len(x))
        yield "reconstructions", torch.cat([x, vae.decode(q.mu[:n], y)]), n

        gen = torch.Generator().manual_seed(self.seed)
        if vae.conditional:
            yield "prior_samples", vae.decode_class_rows(vae.sample_prior(8, gen)), 8
        else:
            yield "prior_samples", vae.decode(vae.sample_prior(self.num_samples, gen)), 8

        # pairs (x0, x1), (x2, x3), ...; a conditional model draws each with the label of its first image
        first = slice(0, n - 1, 2)
        pairs = vae.interpolate(x[first], x[1:n:2], self.interpolation_steps, y[first] if vae.conditional else None)
        yield "interpolations", pairs.flatten(0, 1), self.interpolation_steps

        dims = q.mu.var(0).topk(min(self.traversal_dims, vae.latent_dim)).indices
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.traversal_steps, device=x.device)
        z = q.mu[0].repeat(len(dims), self.traversal_steps, 1)
        z[torch.arange(len(dims)), :, dims] = values
        y_rows = y[:1].repeat(len(dims) * self.traversal_steps)
        yield "traversals", vae.decode(z.reshape(-1, vae.latent_dim), y_rows), self.traversal_steps
