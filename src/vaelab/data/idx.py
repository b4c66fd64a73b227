"""Reading IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed, with integrity checks.

Layout: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions n,
n big-endian int32 sizes, then the data. A file whose length disagrees with its
header, or a gzip stream that ends early or fails its CRC, is an error.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import DataError


def read_idx(path: str | Path) -> np.ndarray:
    """Return the array stored in an IDX file (``.gz`` or uncompressed) as uint8."""
    return parse_idx(idx_bytes(path), path)


def idx_bytes(path: str | Path) -> bytes:
    """The IDX content of a file, decompressed when it is ``.gz``."""
    path = Path(path)
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is corrupt or truncated ({err}): delete it and prepare the data again") from err


def parse_idx(raw: bytes, path: str | Path) -> np.ndarray:
    """The uint8 array of IDX content ``raw`` (read from ``path``, named in errors)."""
    path = Path(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number): delete it and prepare the data again")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path} is not a uint8 IDX file (type {dtype_code:#x}, {ndim} dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header cut short): delete it and prepare the data again")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header says {expected} bytes of data for shape {list(dims)}, "
            f"file holds {len(raw) - header}; delete it and prepare the data again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable for torch
