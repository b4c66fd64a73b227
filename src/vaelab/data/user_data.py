"""A user's own images (``data=folder``, ``data=array``): their source, and what they tell the
config before anything is built.

``data/folder.yaml`` and ``data/array.yaml`` take ``data.channels``, ``data.image_size`` and
``data.num_classes`` from the data unless they are set: ``${vaelab.from_data:<name>,<path>,<what>}``
(an OmegaConf resolver, registered when vaelab is imported) reads them from the files (a folder's
image headers, an array's shape and labels), and ``data.shape`` = [channels, image_size,
image_size] follows, so the models' input size follows the data.
"""

from __future__ import annotations

from pathlib import Path

from vaelab.errors import ConfigError

FACTS = ("channels", "image_size", "num_classes")


def user_source(name: str, path: str | None, root: Path, channels: int | None, image_size: int | None):
    """The source (as ``vaelab.data.sources.make_source`` returns) of a user's folder or array file."""
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size is None or int(image_size) < 1:
        raise ConfigError(f"data.image_size must be a positive number of pixels, got {image_size}")
    if name == "folder":
        from vaelab.data.folder import FolderSource

        return FolderSource(path, root, channels, image_size)
    from vaelab.data.arrays import ArraySource

    return ArraySource(path, channels, image_size)


def from_data(name: str, path: str | None, what: str) -> int:
    """``what`` (channels, image_size or num_classes) as the user's data ``name`` at ``path`` say."""
    if what not in FACTS:
        raise ConfigError(f"vaelab.from_data reads one of {', '.join(FACTS)}, not {what!r}")
    if name == "folder":
        from vaelab.data.folder import fact
    elif name == "array":
        from vaelab.data.arrays import fact
    else:
        raise ConfigError(f"vaelab.from_data reads data=folder or data=array, not data.name={name}")
    return fact(path, what)
