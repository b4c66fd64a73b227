"""Pictures of what the VAE has learned, logged to TensorBoard at the end of every epoch (after validation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import lightning as L
import torch

from vaelab.callbacks import epoch_end_step, tensorboard_writer
from vaelab.callbacks.callback import Callback
from vaelab.data.sources import class_names
from vaelab.labelled_grid import labelled_grid
from vaelab.representation import latent_scatter
from vaelab.tensorboard import add_figure, add_image


class LatentImages(Callback):
    """Four labelled grids and a scatter plot per epoch, for a fixed set of validation images (test
    images when there is no validation split) and fixed prior draws, so that the pictures of
    successive epochs compare. Each carries its description (the (i) of its card in TensorBoard)
    and is logged at the step of the epoch's scalars (``epoch_end_step``):

    - ``images/reconstructions``: the inputs (row "input") above E[x | z = mu(x)] (row "reconstruction");
    - ``images/prior_samples``: E[x|z] for z ~ p(z) (conditional models: one row per class, named,
      the same z in every row, so each column shows one style across the classes);
    - ``images/interpolations``: each row decodes z = (1 - t) mu(a) + t mu(b), t from 0 to 1 (above the columns);
    - ``images/traversals``: each row moves one latent dimension of mu(x_0) from -r to r (row
      "z_7: -3 .. 3"), for the dimensions whose posterior means vary most across ``ranking_images``
      images (the ones the model uses most; a measure valid for every posterior and prior family);
    - ``latent/scatter``: the posterior means of those ``ranking_images`` images in 2-D, coloured by
      label (``vaelab.representation.latent_scatter``; PCA beyond two dimensions).
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
        step = epoch_end_step(trainer)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for grid in self.grids(trainer.datamodule, pl_module.vae):
                add_image(writer, f"images/{grid.tag}", labelled_grid(grid.images, grid.nrow, grid.row_labels,
                                                                      grid.column_labels), step, grid.description)
            figure, description = self.scatter(trainer.datamodule, pl_module.vae)
            add_figure(writer, "latent/scatter", figure, step, description)
        pl_module.train(was_training)

    def _examples(self, datamodule, vae):
        x, y = datamodule.examples(max(self.num_examples, self.ranking_images), "val")
        split = "validation" if datamodule.val_set is not None else "test"
        return x.to(vae.device), y.to(vae.device), split

    def grids(self, datamodule, vae) -> Iterator[Grid]:
        """The four grids, their images [N, C, H, W] in [0, 1] in rows of ``nrow``."""
        x, y, split = self._examples(datamodule, vae)
        q = vae.encode(x, y)
        ranked = q.mu
        x, y, n = x[: self.num_examples], y[: self.num_examples], min(self.num_examples, len(x))
        yield Grid("reconstructions", torch.cat([x, vae.decode(q.mu[:n], y)]), n,
                   f"Top row: {n} fixed {split} images x; bottom row: their reconstructions E[x | z = mu(x)], "
                   "decoded from the posterior mean.", ["input", "reconstruction"])

        gen = torch.Generator().manual_seed(self.seed)
        if vae.conditional:
            yield Grid("prior_samples", vae.decode_class_rows(vae.sample_prior(8, gen)), 8,
                       "One row per class y: E[x | z, y] for the same 8 draws z ~ p(z) in every row (a column shows "
                       "one style across the classes); the same draws every epoch.",
                       class_names(datamodule.name, vae.num_classes))
        else:
            yield Grid("prior_samples", vae.decode(vae.sample_prior(self.num_samples, gen)), 8,
                       f"E[x | z] for {self.num_samples} draws z ~ p(z), the same draws every epoch.")

        # pairs (x0, x1), (x2, x3), ...; a conditional model draws each with the label of its first image
        first = slice(0, n - 1, 2)
        pairs = vae.interpolate(x[first], x[1:n:2], self.interpolation_steps, y[first] if vae.conditional else None)
        yield Grid("interpolations", pairs.flatten(0, 1), self.interpolation_steps,
                   "Each row decodes the straight line z = (1 - t) mu(a) + t mu(b) between the posterior means of "
                   f"two {split} images a and b, t from 0 (left) to 1 (right)"
                   + (", with the label of a." if vae.conditional else "."),
                   column_labels=["t = 0", *[""] * (self.interpolation_steps - 2), "t = 1"])

        dims = ranked.var(0).topk(min(self.traversal_dims, vae.latent_dim)).indices
        r = self.traversal_range
        values = torch.linspace(-r, r, self.traversal_steps, device=x.device)
        z = q.mu[0].repeat(len(dims), self.traversal_steps, 1)
        z[torch.arange(len(dims)), :, dims] = values
        y_rows = y[:1].repeat(len(dims) * self.traversal_steps)
        yield Grid("traversals", vae.decode(z.reshape(-1, vae.latent_dim), y_rows), self.traversal_steps,
                   f"Each row sets one latent dimension z_d of mu(x_0) (the first {split} image's posterior mean) to "
                   f"{self.traversal_steps} values from -{r:g} to {r:g}, the others fixed; the rows are the "
                   f"dimensions whose posterior means vary most across {len(ranked)} {split} images, most first.",
                   [f"z_{d}: -{r:g} .. {r:g}" for d in dims.tolist()])

    def scatter(self, datamodule, vae):
        """(matplotlib figure, description) of the ``ranking_images`` images' posterior means in 2-D."""
        x, y, split = self._examples(datamodule, vae)
        mu = vae.encode(x, y).mu.float().cpu().numpy()
        figure = latent_scatter(mu, y.cpu().numpy(), class_names(datamodule.name, vae.num_classes), len(mu))
        return figure, (f"The posterior means mu(x) of {len(mu)} {split} images in 2-D (the latents themselves when "
                        "there are two, else their first two principal components), coloured by label"
                        + (" (given to the encoder of this conditional model, so the latents need not carry it)."
                           if vae.conditional else "."))


class Grid(NamedTuple):
    tag: str  # logged as images/<tag>
    images: torch.Tensor
    nrow: int
    description: str
    row_labels: list[str] | None = None
    column_labels: list[str] | None = None
