"""Binary images held as packed bits (one bit per pixel, ``np.packbits`` order), read like a uint8 tensor.

dSprites' 737,280 binary 64x64 images take 377 MB this way instead of 3 GB as bytes (9 GB as RGB
bytes), so a whole split stays on the training device. ``PackedImages`` offers what the data
pipeline reads of an image tensor [N, C, H, W]: indexing along the images (a subset, still packed),
``len``, ``shape``, ``nbytes``, ``device``, ``to(device)`` and ``float()`` (the pixel values 0..255
as floats, unpacked where the bits are). So the batch gather ``images[idx].float().div_(255)`` of
``DeviceBatches`` and ``TensorImages`` unpacks one batch at a time, on the device, unchanged.

With ``colours`` (uint8 [N, C], one colour per image) a pixel that is on has the values of its
image's colour in the C channels, a pixel that is off is 0 (colour dSprites); without, the images
have one channel, 255 where on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# bit k of a packed byte, most significant first (np.packbits' default bit order)
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


class PackedImages:
    """``bits`` uint8 [N, H * W / 8] (row-major pixels, 8 per byte, first pixel in the high bit),
    ``size`` (H, W), optional ``colours`` uint8 [N, C]."""

    def __init__(self, bits: torch.Tensor, size: Sequence[int], colours: torch.Tensor | None = None):
        h, w = (int(s) for s in size)
        if bits.dtype != torch.uint8 or bits.ndim != 2 or bits.shape[1] * 8 != h * w:
            raise ValueError(f"bits must be uint8 [N, {h * w // 8}] for {h}x{w} images, got {bits.dtype} "
                             f"{list(bits.shape)}")
        if colours is not None and (colours.dtype != torch.uint8 or colours.shape[0] != bits.shape[0]):
            raise ValueError(f"colours must be uint8 [{bits.shape[0]}, C], got {colours.dtype} {list(colours.shape)}")
        self.bits, self.size, self.colours = bits, (h, w), colours

    @classmethod
    def pack(cls, images: torch.Tensor) -> PackedImages:
        """Pack binary images [N, 1, H, W] (any dtype; nonzero = on)."""
        n, c, h, w = images.shape
        if c != 1 or (h * w) % 8:
            raise ValueError(f"need one-channel images with H * W a multiple of 8, got {list(images.shape)}")
        bits = (images.reshape(n, -1, 8) != 0).to(torch.uint8) << _SHIFTS.to(images.device)
        return cls(bits.sum(-1, dtype=torch.uint8), (h, w))

    @property
    def shape(self) -> torch.Size:
        channels = 1 if self.colours is None else self.colours.shape[1]
        return torch.Size((len(self.bits), channels, *self.size))

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + (0 if self.colours is None else self.colours.nbytes)

    @property
    def device(self) -> torch.device:
        return self.bits.device

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, index) -> PackedImages:
        """The images at ``index`` (indices, a boolean mask or a slice), still packed."""
        bits = self.bits[index]
        if bits.ndim != 2:
            raise IndexError("index PackedImages with a sequence, a mask or a slice (it keeps the image axis)")
        return PackedImages(bits, self.size, None if self.colours is None else self.colours[index])

    def to(self, device) -> PackedImages:
        return PackedImages(self.bits.to(device), self.size,
                            None if self.colours is None else self.colours.to(device))

    def mask(self) -> torch.Tensor:
        """Which pixels are on: bool [N, 1, H, W]."""
        on = (self.bits.unsqueeze(-1) >> _SHIFTS.to(self.device)) & 1
        return on.view(len(self.bits), 1, *self.size).bool()

    def unpacked(self) -> torch.Tensor:
        """The images as uint8 [N, C, H, W]: 255 (or the image's colour) where on, 0 elsewhere."""
        on = self.mask().to(torch.uint8)
        return on * 255 if self.colours is None else on * self.colours[:, :, None, None]

    def float(self) -> torch.Tensor:
        """``unpacked()`` as float32, as ``uint8_tensor.float()`` gives it (values 0..255)."""
        return self.unpacked().float()
