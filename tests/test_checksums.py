"""Dataset files against their published checksums: a changed pixel is caught, the result is
cached per file version, and data.verify=false skips the check."""

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import MIRROR

from vaelab.data import checksums
from vaelab.data.sources import load_dataset
from vaelab.errors import DataError

MNIST_RAW = Path(MIRROR) / "MNIST" / "raw"
T10K = "t10k-images-idx3-ubyte"


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A copy of the MNIST mirror whose test images have one pixel changed (still a valid IDX file)."""
    raw = tmp_path / "mirror" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_RAW.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    content = bytearray(gzip.decompress((raw / f"{T10K}.gz").read_bytes()))
    content[16 + 28 * 14 + 14] ^= 0xFF  # the middle pixel of the first test image
    (raw / f"{T10K}.gz").write_bytes(gzip.compress(bytes(content)))
    return raw


def test_a_changed_pixel_is_refused_naming_the_file_both_checksums_and_the_fix(tmp_path, mirror):
    altered = hashlib.md5(gzip.decompress((mirror / f"{T10K}.gz").read_bytes())).hexdigest()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path / "root", [str(mirror.parents[1])], download=False)
    assert str(err.value) == (
        f"{mirror / T10K}.gz does not match its published checksum (MD5 of its uncompressed content: expected "
        f"2646ac647ad5339dbf082846283269ea, got {altered}): the file is corrupt or altered; fetch it again (copy it "
        "anew from the mirror, or delete it from data.root so that it is prepared or downloaded again), or set "
        "data.verify=false to use it as it is")
    data = load_dataset("mnist", tmp_path / "root", [str(mirror.parents[1])], download=False, verify=False)
    assert data.test.images.shape == (10000, 1, 28, 28)


def test_each_file_version_is_hashed_once(tmp_path, monkeypatch):
    """The second load reads the cache instead of hashing (catches a cache that is never used);
    a file that changes afterwards is hashed again (catches a cache keyed by path alone)."""
    raw = tmp_path / "mirror" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_RAW.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    root = tmp_path / "root"
    load_dataset("mnist", root, [str(tmp_path / "mirror")], download=False)
    assert len((root / checksums.CACHE).read_text().split('"md5"')) == 5  # the 4 files

    def no_hashing(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr(checksums.hashlib, "md5", no_hashing)
    load_dataset("mnist", root, [str(tmp_path / "mirror")], download=False)
    monkeypatch.undo()
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[8] = (content[8] + 1) % 10  # the first test label
    labels.write_bytes(gzip.compress(bytes(content), mtime=0))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz does not match its published checksum"):
        load_dataset("mnist", root, [str(tmp_path / "mirror")], download=False)


def test_the_real_files_pass():
    """The table against the real files (catches a wrong entry, which would refuse good data)."""
    folders = {"MNIST": MNIST_RAW, "Fashion-MNIST": Path("/usr/share/datasets/fashion-mnist")}
    for dataset, table in checksums.IDX_MD5.items():
        for stem, md5 in table.items():
            assert hashlib.md5(gzip.decompress((folders[dataset] / f"{stem}.gz").read_bytes())).hexdigest() == md5
    archive = Path(MIRROR) / "CIFAR10-JPEG" / "cifar10-jpeg.tar.gz"
    assert checksums.md5_of_file(archive) == checksums.CIFAR10_JPEG_MD5
