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


# Few labels for semi-supervised learning (data.labels_per_class): the labelled subset and the batches.

def _labelled_rows(dm: ImageDataModule, x: torch.Tensor) -> torch.Tensor:
    """For each image of x, its position in dm.labelled_indices (each must match exactly one labelled image)."""
    subset = dm.train_set.images[dm.labelled_indices].float().div(255).flatten(1)
    same = (x.flatten(1)[:, None, :] == subset[None]).all(-1)
    assert same.sum(1).tolist() == [1] * len(x), "an image of the labelled part is not one of the labelled subset"
    return same.int().argmax(1)


def test_labels_per_class_keeps_a_balanced_subset_chosen_by_its_seed():
    dm = _datamodule(labels_per_class=10)
    dm.setup("fit")
    idx = dm.labelled_indices
    assert dm.num_labelled == 100 and len(idx.unique()) == 100 and 0 <= idx.min() and idx.max() < 55000
    assert torch.bincount(dm.train_set.labels[idx], minlength=10).tolist() == [10] * 10
    again, other = _datamodule(labels_per_class=10), _datamodule(labels_per_class=10, labels_seed=1)
    again.setup("fit")
    other.setup("fit")
    assert torch.equal(again.labelled_indices, idx)
    assert len(set(other.labelled_indices.tolist()) & set(idx.tolist())) < 10  # ~0.2 shared by chance
    everything = _datamodule()
    everything.setup("fit")
    assert everything.num_labelled == 55000 and not everything.semi_supervised
    held_out = _datamodule(labels_per_class=10, exclude_classes=[5])
    held_out.setup("fit")
    counts = torch.bincount(held_out.train_set.labels[held_out.labelled_indices], minlength=10).tolist()
    assert counts == [10, 10, 10, 10, 10, 0, 10, 10, 10, 10] and held_out.num_labelled == 90


def test_semi_supervised_batches_append_a_labelled_part_that_covers_the_subset_pass_by_pass():
    dm, plain = _datamodule(labels_per_class=10, labelled_batch_size=30, batch_size=64), _datamodule(batch_size=64)
    dm.setup("fit")
    plain.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceBatches) and len(loader) == len(plain.train_dataloader()) == 860
    seen = []
    for (x, y), (x_plain, _) in zip(loader, plain.train_dataloader()):
        assert x.shape == (94, 1, 28, 28) and y.shape == (94,)
        assert (y[:64] == -1).all()
        assert torch.equal(x[:64], x_plain)  # the unlabelled part is the usual batch of the whole training set
        rows = _labelled_rows(dm, x[64:])
        assert torch.equal(y[64:], dm.train_set.labels[dm.labelled_indices[rows]])
        seen += rows.tolist()
        if len(seen) >= 120:  # 4 batches of 30: one pass over the 100 labelled images, then a new pass
            break
    assert sorted(seen[:100]) == list(range(100))  # no repeat before the whole subset was seen
    assert len(set(seen[100:])) == 20  # the start of the next pass: no repeat inside it either
    rerun = _datamodule(labels_per_class=10, labelled_batch_size=30, batch_size=64)
    rerun.setup("fit")
    x_again, y_again = next(iter(rerun.train_dataloader()))
    x_first, y_first = next(iter(dm.train_dataloader()))
    assert torch.equal(x_again, x_first) and torch.equal(y_again, y_first)


def test_device_batches_labelled_part_by_epoch_rank_and_pass():
    images, labels = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1), torch.arange(40) % 4
    subset = torch.tensor([3, 8, 15, 16, 22, 29, 37])
    def labelled_part(epoch=0, rank=0, world_size=1):
        batches = DeviceBatches(images, labels, batch_size=4, shuffle=True, seed=2, current_epoch=lambda: epoch,
                                rank=rank, world_size=world_size, even_shards=True, labelled=subset,
                                labelled_batch_size=3)
        return torch.cat([(x[4:].flatten() * 255).long() for x, _ in batches])
    stream = labelled_part()
    assert len(stream) == 10 * 3  # 10 batches of 4 unlabelled images, each with 3 labelled ones
    for start in (0, 7, 14, 21):  # passes of 7: each a permutation of the subset, drawn afresh
        assert sorted(stream[start : start + 7].tolist()) == subset.tolist()
    assert not torch.equal(stream[:7], stream[7:14])
    assert torch.equal(stream, labelled_part())
    assert not torch.equal(stream, labelled_part(epoch=1))
    assert not torch.equal(labelled_part(rank=0, world_size=2), labelled_part(rank=1, world_size=2))
    _, y = next(iter(DeviceBatches(images, labels, 4, False, labelled=subset, labelled_batch_size=3)))
    assert y[:4].tolist() == [-1] * 4 and y[4:].tolist() == (labels[stream[:3]]).tolist()


def test_semi_supervised_batches_resume_mid_epoch_with_the_same_labelled_parts():
    progress = SimpleNamespace(current=SimpleNamespace(processed=0))
    trainer = SimpleNamespace(world_size=1, global_rank=0, current_epoch=2,
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
    dm = _datamodule(labels_per_class=10, labelled_batch_size=30, batch_size=1000, binarize="dynamic")
    dm.setup("fit")
    dm.trainer = trainer
    uninterrupted = list(dm.train_dataloader())
    assert len(uninterrupted) == 55 and uninterrupted[0][0].shape == (1030, 1, 28, 28)
    progress.current.processed = 17  # mid-epoch, and mid-pass over the labelled subset (17 * 30 = 510)
    state = dm.train_dataloader().state_dict()
    assert state == {"epoch": 2, "batches_done": 17}
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 55 - 17
    for (x, y), (x_ref, y_ref) in zip(rest, uninterrupted[17:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)  # labelled part and its binarization included
    assert (rest[0][1][1000:] >= 0).all()


def test_validation_and_test_labels_are_untouched_by_labels_per_class():
    dm, plain = _datamodule(labels_per_class=10, eval_batch_size=1000), _datamodule(eval_batch_size=1000)
    dm.setup("fit")
    plain.setup("fit")
    assert torch.equal(dm.val_set.labels, plain.val_set.labels) and torch.equal(dm.test_set.labels, plain.test_set.labels)
    assert torch.equal(dm.train_set.labels, plain.train_set.labels)  # hidden in the batches, not in the data
    for split in ("val_dataloader", "test_dataloader"):
        for (x, y), (x_ref, y_ref) in zip(getattr(dm, split)(), getattr(plain, split)(), strict=True):
            assert x.shape == (1000, 1, 28, 28) and (y >= 0).all() and torch.equal(y, y_ref) and torch.equal(x, x_ref)
    x, y = dm.examples(8, "val")
    x_ref, y_ref = plain.examples(8, "val")
    assert x.shape == (8, 1, 28, 28) and torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_without_labels_per_class_the_training_batches_are_unchanged():
    dm = _datamodule(on_device=True)
    dm.setup("fit")
    assert dm.labels_per_class is None and dm.num_classes == 10
    x, y = next(iter(dm.train_dataloader()))
    # the first training batch of seed 0, as before labels_per_class existed
    assert x.shape == (128, 1, 28, 28) and y[:10].tolist() == [9, 3, 4, 4, 4, 9, 5, 5, 4, 0]
    assert x.double().sum().item() == pytest.approx(12969.964821, abs=1e-3)


def test_labels_per_class_config_errors():
    with pytest.raises(ConfigError, match=r"^data.labels_per_class must be >= 1 \(or null to use every training label\), got 0$"):
        _datamodule(labels_per_class=0)
    with pytest.raises(ConfigError, match=r"^data.labelled_batch_size must be >= 1, got 0$"):
        _datamodule(labels_per_class=10, labelled_batch_size=0)
    too_many = _datamodule(labels_per_class=4954)  # the training split has 4953 fives, the fewest of any digit
    with pytest.raises(ConfigError, match=r"^data.labels_per_class=4954 is more than the 4953 training images of class 5: use at most 4953$"):
        too_many.setup("fit")
    without_fives = _datamodule(labels_per_class=4954, exclude_classes=[5])  # then the fewest are 5335 fours
    without_fives.setup("fit")
    assert without_fives.num_labelled == 9 * 4954
    dataloader = _datamodule(labels_per_class=10, on_device=False)
    dataloader.setup("fit")
    with pytest.raises(ConfigError, match=r"^data.labels_per_class needs the on-device batches: use data.on_device=true or auto"):
        dataloader.train_dataloader()
    assert next(iter(dataloader.test_dataloader()))[1][0].item() == 7  # evaluation needs no labelled part
    with pytest.raises(ConfigError, match=r"^data.num_classes=5 but mnist has label 9: use data.num_classes=10$"):
        _datamodule(num_classes=5).setup("fit")


def test_data_config_has_the_semi_supervised_keys(tmp_path):
    from conftest import compose_config

    from vaelab.errors import instantiate

    cfg = compose_config(tmp_path)
    assert cfg.data.num_classes == 10 and cfg.data.labels_per_class is None and cfg.data.labelled_batch_size == 100
    dm = instantiate(compose_config(tmp_path, ["data.labels_per_class=10", "data.labels_seed=4"]).data)
    assert dm.labels_per_class == 10 and dm.labels_seed == 4 and dm.semi_supervised
    with pytest.raises(ConfigError, match="data.labels_per_class must be >= 1"):
        instantiate(compose_config(tmp_path, ["data.labels_per_class=-1"]).data)
