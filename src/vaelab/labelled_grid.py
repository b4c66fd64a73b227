"""A grid of images with its rows and columns labelled in the picture itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.utils import make_grid

BACKGROUND, INK = (255, 255, 255), (0, 0, 0)


def labelled_grid(images: torch.Tensor, nrow: int, row_labels: Sequence[str] | None = None,
                  column_labels: Sequence[str] | None = None, scale: int = 2, padding: int = 2) -> np.ndarray:
    """The images (float [N, C, H, W] in [0, 1]) in rows of ``nrow`` (torchvision's ``make_grid``,
    grey between them), enlarged ``scale`` times by repeating pixels (so they stay sharp), with
    ``row_labels[r]`` written left of row r and ``column_labels[c]`` above column c: RGB uint8
    [H', W', 3]."""
    from PIL import Image, ImageDraw, ImageFont

    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=0.5)
    pixels = (grid * 255).round().byte().permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
    cell_h, cell_w = (images.shape[2] + padding) * scale, (images.shape[3] + padding) * scale
    font = ImageFont.load_default(size=max(10, int(cell_h * 0.4)))  # legible when TensorBoard shrinks the picture
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> int:
        return int(measure.textlength(text, font=font))

    left = max(width(t) for t in row_labels) + font.size if row_labels else 0  # half a font size either side
    top = int(font.size * 1.6) if column_labels else 0
    canvas = Image.new("RGB", (left + pixels.shape[1], top + pixels.shape[0]), BACKGROUND)
    canvas.paste(Image.fromarray(pixels), (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(row_labels or ()):
        draw.text((left - font.size // 2, top + padding * scale + r * cell_h + (cell_h - padding * scale) // 2),
                  text, fill=INK, font=font, anchor="rm")
    for c, text in enumerate(column_labels or ()):
        draw.text((left + padding * scale + c * cell_w + (cell_w - padding * scale) // 2, top // 2),
                  text, fill=INK, font=font, anchor="mm")
    return np.asarray(canvas)
