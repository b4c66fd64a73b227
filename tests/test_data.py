"""Datasets: the real files through the mirror, integrity checks, the split and the batches."""

import gzip
import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA_ROOT, MIRROR

from vaelab.data.datamodule import ImageDataModule
from vaelab.data.device_loader import DeviceBatches
from vaelab.data.idx import read_idx
from vaelab.data.sources import load_dataset
from vaelab.errors import ConfigError, DataError

MNIST_RAW = Path(MIRROR) / "MNIST" / "raw"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def test_mnist_from_the_mirror_is_the_real_dataset():
    data = load_dataset("mnist", DATA_ROOT, [MIRROR], download=False)
    assert data.train.images.shape == (60000, 1, 28, 28) and data.test.images.shape == (10000, 1, 28, 28)
    assert data.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    pixels = data.train.images.double() / 255
    assert pixels.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3081, abs=1e-4)
    raw = gzip.decompress((MNIST_RAW / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "27ae3e4e09519cfbb04c329615203637"


def test_fashion_mnist_from_the_debian_folder():
    data = load_dataset("fashion_mnist", "/nonexistent-root", [None, str(FASHION_DEBIAN)], download=False)
    assert data.train.images.shape == (60000, 1, 28, 28) and data.test.images.shape == (10000, 1, 28, 28)
    assert sorted(data.test.labels.unique().tolist()) == list(range(10))
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10


def test_cifar10_jpeg_copy_is_decoded_once_into_the_data_root():
    data = load_dataset("cifar10", DATA_ROOT, [MIRROR], download=False)
    assert data.train.images.shape == (50000, 3, 32, 32) and data.test.images.shape == (10000, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8
    assert torch.bincount(data.train.labels).tolist() == [5000] * 10
    assert (DATA_ROOT / "CIFAR10-JPEG" / "cifar10-jpeg.npz").is_file()
    again = load_dataset("cifar10", DATA_ROOT, [], download=False)  # now from the prepared root alone
    assert torch.equal(again.test.images, data.test.images)


def test_a_prepared_root_in_torchvision_layout_comes_first(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_RAW.glob("*.gz"):
        (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    data = load_dataset("mnist", tmp_path, [], download=False)
    assert data.train.labels[:3].tolist() == [5, 0, 4]


def _copy_mnist(dest: Path) -> Path:
    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_RAW.glob("*.gz"):
        shutil.copy(f, raw / f.name)
    return raw


def test_truncated_gzip_idx_file_is_an_error_naming_it(tmp_path):
    raw = _copy_mnist(tmp_path / "mirror")
    victim = raw / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is corrupt or truncated"):
        load_dataset("mnist", tmp_path / "root", [str(tmp_path / "mirror")], download=False)


def test_truncated_uncompressed_idx_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(gzip.decompress((MNIST_RAW / "t10k-labels-idx1-ubyte.gz").read_bytes())[:5000])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is truncated or corrupt: header says 10000 bytes"):
        read_idx(path)


def test_corrupt_cifar_cache_is_an_error(tmp_path):
    cache = tmp_path / "CIFAR10-JPEG" / "cifar10-jpeg.npz"
    cache.parent.mkdir()
    cache.write_bytes((DATA_ROOT / "CIFAR10-JPEG" / "cifar10-jpeg.npz").read_bytes()[:1_000_000])
    with pytest.raises(DataError, match="cifar10-jpeg.npz is corrupt or truncated"):
        load_dataset("cifar10", tmp_path, [], download=False)


def test_missing_data_lists_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path / "root", [str(tmp_path / "empty-mirror")], download=False)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("MNIST not found")
    assert str(tmp_path / "root" / "MNIST" / "raw") in message
    assert str(tmp_path / "empty-mirror" / "MNIST" / "raw") in message
    assert "download disabled" in message and "VAELAB_DATA_MIRROR" in message


def _datamodule(**kw) -> ImageDataModule:
    args = dict(name="mnist", shape=[1, 28, 28], root=str(DATA_ROOT), mirror=MIRROR, download=False,
                val_size=5000, batch_size=128)
    return ImageDataModule(**{**args, **kw})


def test_split_is_deterministic_disjoint_and_complete():
    a, b = _datamodule(), _datamodule()
    a.setup("fit")
    b.setup("fit")
    assert len(a.train_set) == 55000 and len(a.val_set) == 5000 and len(a.test_set) == 10000
    assert torch.equal(a.val_set.images, b.val_set.images)
    # together the two parts are exactly the training set: compare the multiset of image hashes
    full = load_dataset("mnist", DATA_ROOT, [MIRROR], download=False).train
    def digests(images):
        return sorted(hashlib.md5(img.numpy().tobytes()).hexdigest() for img in images)
    assert digests(torch.cat([a.train_set.images, a.val_set.images])) == digests(full.images)
    other = _datamodule(split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_set.images, a.val_set.images)


def test_batches_are_float_intensities_of_the_configured_size():
    dm = _datamodule(batch_size=64)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (64,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    xt, yt = next(iter(dm.test_dataloader()))
    torch.testing.assert_close(xt[0], dm.test_set.images[0].float() / 255)
    assert yt[0].item() == 7  # the first MNIST test digit


def test_without_validation_split_there_is_no_val_loader():
    dm = _datamodule(val_size=0)
    dm.setup("fit")
    assert dm.val_set is None and dm.val_dataloader() == [] and len(dm.train_set) == 60000


@pytest.mark.parametrize("on_device", [True, False])
def test_global_batch_size_must_divide_across_processes(on_device):
    dm = _datamodule(batch_size=128, on_device=on_device)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    assert dm.train_dataloader().batch_size == 64
    dm.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ConfigError, match="data.batch_size=128 does not divide across 3 processes"):
        dm.train_dataloader()


def test_device_batches_equal_the_dataloader_batches():
    on, off = _datamodule(on_device=True, eval_batch_size=1000), _datamodule(on_device=False, eval_batch_size=1000)
    on.setup("fit")
    off.setup("fit")
    assert isinstance(on.test_dataloader(), DeviceBatches) and not isinstance(off.test_dataloader(), DeviceBatches)
    for (xa, ya), (xb, yb) in zip(on.test_dataloader(), off.test_dataloader(), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_device_batches_shuffle_by_seed_and_epoch():
    images, labels = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), torch.arange(50)
    def epoch_labels(seed, epoch):
        batches = DeviceBatches(images, labels, batch_size=8, shuffle=True, seed=seed, current_epoch=lambda: epoch)
        return torch.cat([y for _, y in batches])
    first = epoch_labels(0, 0)
    assert sorted(first.tolist()) == list(range(50))
    assert torch.equal(first, epoch_labels(0, 0))
    assert not torch.equal(first, epoch_labels(0, 1)) and not torch.equal(first, epoch_labels(1, 0))
    x, y = next(iter(DeviceBatches(images, labels, batch_size=8, shuffle=True, seed=0)))
    assert x.dtype == torch.float32 and torch.equal(x.flatten() * 255, y.float())


def test_device_batches_shard_across_processes():
    images, labels = torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10)
    def shard(rank, even):
        return torch.cat([y for _, y in DeviceBatches(images, labels, 2, False, rank=rank, world_size=3,
                                                      even_shards=even)]).tolist()
    # evaluation: uneven shards that together hold every image exactly once
    assert [shard(r, False) for r in range(3)] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    # training: padded to equal shards, so every process takes the same number of steps
    assert [shard(r, True) for r in range(3)] == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]
    assert [len(DeviceBatches(images, labels, 2, False, rank=r, world_size=3, even_shards=True)) for r in range(3)] == [2, 2, 2]


def test_device_batches_resume_mid_epoch_with_the_same_order_and_binarization():
    images = torch.randint(0, 256, (50, 1, 2, 2), dtype=torch.uint8)
    labels = torch.arange(50)
    done = {"batches": 0}
    def loader():
        return DeviceBatches(images, labels, batch_size=8, shuffle=True, seed=3, binarize=True,
                             current_epoch=lambda: 1, batches_done=lambda: done["batches"])
    uninterrupted = list(loader())
    assert len(uninterrupted) == 7
    # the same draws again: binarization does not depend on the global random state
    torch.manual_seed(123)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(uninterrupted, loader(), strict=True))

    first = loader()
    done["batches"] = 3  # the trainer has finished three batches when the checkpoint is written
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_done": 3}
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 4
    for (x, y), (x_ref, y_ref) in zip(rest, uninterrupted[3:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert len(list(resumed)) == 7  # the position applies to one pass only

    other_epoch = loader()
    other_epoch.load_state_dict({"epoch": 0, "batches_done": 3})  # saved in an epoch that has ended
    assert len(list(other_epoch)) == 7
