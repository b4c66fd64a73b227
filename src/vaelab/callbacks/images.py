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
      dimensions with the largest KL on these images (the ones the model uses most).
    """

    def __init__(self, num_examples: int = 8, num_samples: int = 64, interpolation_steps: int = 10,
                 traversal_dims: int = 8, traversal_range: float = 3.0, traversal_steps: int = 11, seed: int = 0):
        self.num_examples = num_examples
        self.num_samples = num_samples
        self.interpolation_steps = interpolation_steps
        self.traversal_dims = traversal_dims
        self.traversal_range = traversal_range
        self.traversal_steps = traversal_steps
        self.seed = seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for tag, images, nrow in self.grids(trainer.datamodule, pl_module):
                writer.add_image(f"images/{tag}", make_grid(images.float().cpu(), nrow=nrow, pad_value=0.5),
                                 global_step=trainer.current_epoch)
        pl_module.train(was_training)

    def grids(self, datamodule, pl_module):
        """Yield (tag, images [N, C, H, W] in [0, 1], images per row) for each picture."""
        x, y = datamodule.examples(self.num_examples, "val")
        x, y = x.to(pl_module.device), y.to(pl_module.device)
        n = len(x)
        q = pl_module.posterior(x, y)
        yield "reconstructions", torch.cat([x, pl_module.decode_mean(q.mu, y)]), n

        gen = torch.Generator().manual_seed(self.seed)
        if pl_module.conditional:
            yield "prior_samples", pl_module.decode_class_rows(pl_module.sample_prior(8, gen)), 8
        else:
            yield "prior_samples", pl_module.decode_mean(pl_module.sample_prior(self.num_samples, gen)), 8

        t = torch.linspace(0, 1, self.interpolation_steps, device=x.device)[None, :, None]
        a, b = q.mu[0 : n - 1 : 2, None], q.mu[1:n:2, None]  # pairs (x0, x1), (x2, x3), ...
        z = ((1 - t) * a + t * b).reshape(-1, pl_module.latent_dim)
        # (a conditional model draws each interpolation with the label of its first image)
        y_rows = y[0 : n - 1 : 2].repeat_interleave(self.interpolation_steps)
        yield "interpolations", pl_module.decode_mean(z, y_rows), self.interpolation_steps

        dims = q.kl_standard_normal_per_dim().mean(0).topk(min(self.traversal_dims, pl_module.latent_dim)).indices
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.traversal_steps, device=x.device)
        z = q.mu[0].repeat(len(dims), self.traversal_steps, 1)
        z[torch.arange(len(dims)), :, dims] = values
        y_rows = y[:1].repeat(len(dims) * self.traversal_steps)
        yield "traversals", pl_module.decode_mean(z.reshape(-1, pl_module.latent_dim), y_rows), self.traversal_steps
