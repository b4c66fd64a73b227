"""Dataset files checked against their published MD5 checksums, once per version of each file.

A mirror's file with one changed pixel still parses; only its checksum tells. Each known file
is hashed the first time it is read, and the result is cached in
``<data.root>/.vaelab-checksums.json`` under the file's resolved path, size and modification
time, so later runs skip the hashing until the file changes. ``data.verify=false`` skips it all.

- MNIST and Fashion-MNIST: the MD5 of each IDX file's uncompressed content (mirrors recompress
  the ``.gz`` files, so the compressed bytes differ while the content must not);
- CIFAR-10, torchvision's pickled batches: torchvision's own table (``CIFAR10.train_list`` ...);
- CIFAR-10, the JPEG copy ``CIFAR10-JPEG/cifar10-jpeg.tar.gz``: the MD5 its mirror publishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from vaelab.errors import DataError, VaelabError
from vaelab.files import write_json_atomic

log = logging.getLogger(__name__)

CACHE = ".vaelab-checksums.json"
IDX_MD5 = {  # of the uncompressed files
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "Fashion-MNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
CIFAR10_JPEG_MD5 = "1b8efc6b8e65c52ec0ceeeba50aeeaa5"


def cifar10_batches_md5() -> dict[str, str]:
    """torchvision's MD5s of the CIFAR-10 python batches (file name -> MD5)."""
    from torchvision.datasets import CIFAR10

    return {name: md5 for name, md5 in [*CIFAR10.train_list, *CIFAR10.test_list]}


def md5_of_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Checksums:
    """Verifies files against expected MD5s, remembering the files already verified under ``root``."""

    def __init__(self, root: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(root) / CACHE
        self.verified: dict[str, dict] = {}
        if enabled and self.path.is_file():
            try:
                self.verified = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.verified = {}  # a damaged cache only costs hashing again

    def verify(self, path: Path, expected: str, content: bytes | None = None) -> None:
        """Raise DataError when ``path`` (or its uncompressed ``content``) does not have MD5
        ``expected``; skipped when disabled or when this version of the file was verified."""
        if not self.enabled:
            return
        stat = path.stat()
        key = str(path.resolve())
        version = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": expected}
        if self.verified.get(key) == version:
            return
        actual = hashlib.md5(content).hexdigest() if content is not None else md5_of_file(path)
        if actual != expected:
            what = "MD5 of its uncompressed content" if content is not None and path.suffix == ".gz" else "MD5"
            raise DataError(
                f"{path} does not match its published checksum ({what}: expected {expected}, got {actual}): the "
                "file is corrupt or altered; fetch it again (copy it anew from the mirror, or delete it from data.root "
                "so that it is prepared or downloaded again), or set data.verify=false to use it as it is"
            )
        self.verified[key] = version
        try:
            write_json_atomic(self.path, self.verified)
        except (OSError, VaelabError) as err:  # a read-only data.root: verify again next time
            log.debug("could not cache the checksum of %s in %s: %s", path, self.path, err)
