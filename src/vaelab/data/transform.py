"""How user images become a model's input: the one conversion that the folder and array data
sources store and that ``vaelab.load(path).transform`` applies to new images.

Images arrive as numpy arrays or torch tensors ([N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1
or 3; uint8, other integers in 0..255, floats in [0, 1] or bool), as PIL images, or as image files
(PNG, JPEG, ...; a folder stands for every image in it). Each is

1. checked and brought to 8-bit [N, C, H, W] (``as_uint8``: a float x becomes round(255 x), so
   every image lies on the 256-value grid the training images were on);
2. given the model's channel count (``convert_channels``: RGB to grey by the ITU-R 601 luma
   L = round(0.299 R + 0.587 G + 0.114 B), PIL's "L" conversion; grey to RGB by repeating it);
3. scaled, keeping its aspect ratio, until it covers H x W (antialiased bilinear), and
   center-cropped to H x W (``fit_size``).

``ImageTransform`` adds the model's last step: float intensities in [0, 1], and for a model
trained on binarized images (``data.binarize`` static or dynamic) every pixel thresholded at half
intensity (>= 128 of 255 becomes 1): a deterministic stand-in for the training data's
Bernoulli draws, so that the same image always gets the same encoding and score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from vaelab.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LUMA = (0.299, 0.587, 0.114)
# PIL modes of one channel; every other mode (RGB, RGBA, P, CMYK, YCbCr, ...) is read as RGB
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def listing(paths: Sequence[Path], limit: int = 5) -> str:
    names = ", ".join(str(p) for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under ``folder``, recursively, sorted; hidden files and folders skipped."""
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def layout(shape: Sequence[int], name: str = "images") -> str:
    """"NHW", "NCHW" or "NHWC" for an array of images of this shape (C = 1 or 3)."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        first, last = shape[1] in (1, 3), shape[-1] in (1, 3)
        if first and not last:
            return "NCHW"
        if last and not first:
            return "NHWC"
        if first and last:
            raise DataError(f"{name} of shape {list(shape)} could be [N, C, H, W] or [N, H, W, C]: "
                            "store them as [N, C, H, W]")
    raise DataError(f"{name} have shape {list(shape)}: expected [N, H, W], [N, H, W, C] or [N, C, H, W] "
                    "with C = 1 (grey) or 3 (RGB)")


def as_uint8(images: np.ndarray | torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check images (see the module docstring) and return them as uint8 [N, C, H, W]."""
    try:
        t = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    except TypeError as err:  # object or string arrays
        raise DataError(f"{name} are not numbers ({err}): use uint8, integers in 0..255 or floats in [0, 1]") from None
    order = layout(t.shape, name)
    if len(t) == 0:
        raise DataError(f"{name} hold no images (shape {list(t.shape)})")
    t = t.unsqueeze(1) if order == "NHW" else t.permute(0, 3, 1, 2) if order == "NHWC" else t
    if t.dtype == torch.bool:
        return t.to(torch.uint8) * 255
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.is_floating_point():
        nan = torch.isnan(t)
        if nan.any():
            first = int(nan.flatten(1).any(1).nonzero()[0])
            raise DataError(f"{name} hold {int(nan.sum())} NaN values (the first in image {first}): "
                            "replace them before using the images")
        low, high = float(t.min()), float(t.max())
        if low < 0 or high > 1:
            raise DataError(f"{name} are floats from {low:g} to {high:g}, outside [0, 1]: float images must be "
                            "intensities in [0, 1] (divide 0..255 values by 255, or store them as uint8)")
        return (t.to(torch.promote_types(t.dtype, torch.float32)) * 255).round_().to(torch.uint8).contiguous()
    if t.is_complex():
        raise DataError(f"{name} have dtype {t.dtype}: use uint8, integers in 0..255 or floats in [0, 1]")
    low, high = int(t.min()), int(t.max())
    if low < 0 or high > 255:
        raise DataError(f"{name} are integers from {low} to {high}, outside 0..255: use 8-bit values "
                        "(or floats in [0, 1])")
    return t.to(torch.uint8).contiguous()


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] with C = 1 or 3 as ``channels`` channels (see the module docstring)."""
    c = images.shape[1]
    if c == channels:
        return images
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        luma = torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1)
        return (images.double() * luma).sum(1, keepdim=True).round().to(torch.uint8)
    raise DataError(f"images with {c} channels cannot become {channels}-channel images: use 1 (grey) or 3 (RGB)")


def fit_size(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [N, C, h, w] scaled to cover height x width (aspect ratio kept, antialiased bilinear),
    then center-cropped to it."""
    h, w = images.shape[-2:]
    if (h, w) == (height, width):
        return images
    scale = max(height / h, width / w)
    size = [max(height, round(h * scale)), max(width, round(w * scale))]
    return TF.center_crop(TF.resize(images, size, antialias=True), [height, width])


def read_headers(paths: Sequence[Path], root: Path | None = None) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each image file, from its header alone (1 channel for the grey
    modes, 3 for the others); the unreadable files are one DataError naming them and how many."""
    from PIL import Image

    headers, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                headers.append((1 if image.mode in GREY_MODES else 3, image.height, image.width))
        except Exception as err:  # PIL's UnidentifiedImageError, unreadable files
            bad.append(f"{path.relative_to(root) if root else path} ({type(err).__name__})")
    _refuse_unreadable(bad, len(paths))
    return headers


def _refuse_unreadable(bad: Sequence[str], total: int) -> None:
    if bad:
        raise DataError(f"{len(bad)} of {total} image files could not be read: {listing(bad)}; "
                        "remove or replace them")


def pil_pixels(image) -> torch.Tensor:
    """A PIL image as uint8 [1, C, H, W] with its own channel count (1 or 3): 16- and 32-bit grey
    scaled to 8 bits, an alpha channel dropped, a palette expanded to RGB."""
    if image.mode.startswith("I"):  # 0..65535 -> 0..255
        pixels = np.round(np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8)
    else:
        pixels = np.array(image.convert("L" if image.mode in GREY_MODES else "RGB"))  # (a writable copy)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def read_file(path: Path) -> torch.Tensor:
    """An image file as uint8 [1, C, H, W], upright (its EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return pil_pixels(ImageOps.exif_transpose(image))


def to_shape(images: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """uint8 [N, C', H', W'] as [N, C, H, W] of ``shape`` (steps 2 and 3)."""
    c, h, w = (int(s) for s in shape)
    return fit_size(convert_channels(images, c), h, w)


def read_files(paths: Sequence[Path], shape: Sequence[int], root: Path | None = None) -> torch.Tensor:
    """Image files as uint8 [N, C, H, W] of ``shape``; the unreadable ones are one DataError
    naming them (relative to ``root``) and how many."""
    images, bad = torch.empty(len(paths), *(int(s) for s in shape), dtype=torch.uint8), []
    for i, path in enumerate(paths):
        try:
            images[i] = to_shape(read_file(path), shape)[0]
        except Exception as err:  # PIL's UnidentifiedImageError, truncated files, decoder errors
            bad.append(f"{path.relative_to(root) if root else path} ({type(err).__name__})")
    _refuse_unreadable(bad, len(paths))
    return images


def refuse_other_files(others: Sequence[Path], total: int, root: Path) -> None:
    """One DataError naming the files that are not images (by their suffix), and how many."""
    if others:
        names = [p.relative_to(root) for p in others]
        raise DataError(f"{len(others)} of {total} files in {root} are not images ({', '.join(IMAGE_SUFFIXES)}): "
                        f"{listing(names)}; move them out of the folder")


def image_files(path: Path) -> list[Path]:
    """The image file ``path``, or every image in the folder ``path`` (recursively, sorted); a
    DataError for a missing path, an empty folder or a folder holding other files."""
    if path.is_dir():
        images, others = list_files(path)
        refuse_other_files(others, len(images) + len(others), path)
        if not images:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return images
    if not path.is_file():
        raise DataError(f"{path} does not exist: give an image file, a folder of images or an array")
    return [path]


class ImageTransform:
    """User images -> the model's input: float [N, C, H, W] in [0, 1] for a model of ``shape``
    (C, H, W), thresholded at half intensity when ``binarized`` (see the module docstring).

    It takes an array or tensor of images, a PIL image, a file or folder path, or a list of PIL
    images or paths; a 2-D array is one grey image, a 3-D one [N, H, W] grey images."""

    def __init__(self, shape: Sequence[int], binarized: bool = False):
        self.shape = tuple(int(s) for s in shape)
        self.binarized = bool(binarized)

    @classmethod
    def of_run(cls, config: dict) -> ImageTransform:
        """The transform of a run's resolved config (its model's shape and ``data.binarize``)."""
        return cls(config["model"]["shape"], (config.get("data") or {}).get("binarize", "none") != "none")

    def __repr__(self) -> str:
        return f"ImageTransform(shape={list(self.shape)}, binarized={self.binarized})"

    def uint8(self, images) -> torch.Tensor:
        """uint8 [N, C, H, W] of the model's shape (0 or 255 only when ``binarized``)."""
        from PIL import Image

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if items and all(isinstance(i, (str, Path)) for i in items):
            out = read_files([p for i in items for p in image_files(Path(i))], self.shape)
        elif items and all(isinstance(i, Image.Image) for i in items):
            out = torch.cat([to_shape(pil_pixels(i), self.shape) for i in items])
        elif len(items) == 1 and isinstance(items[0], (np.ndarray, torch.Tensor)):
            array = items[0]
            out = to_shape(as_uint8(array[None] if array.ndim == 2 else array), self.shape)
        else:
            raise DataError("give images as an array or tensor, a PIL image, a path, or a list of PIL images or of "
                            f"paths; got {type(images).__name__}")
        return (out >= 128).to(torch.uint8) * 255 if self.binarized else out

    def __call__(self, images) -> torch.Tensor:
        return self.uint8(images).float().div_(255)
