"""A user's own images: the conversion they share with vae.transform (layouts, ranges, channels,
size, binarization), data=folder and data=array with real files written here, what the config reads
from them, the split, the models' shapes, and one training run of each source."""

import hashlib
import json
import os
import time

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, MIRROR, compose_config, read_metrics
from PIL import Image

from vaelab.data.datamodule import ImageDataModule
from vaelab.data.folder import FolderSource, scan
from vaelab.data.sources import load_dataset
from vaelab.data.transform import ImageTransform, as_uint8, convert_channels, fit_size
from vaelab.errors import ConfigError, DataError, instantiate
from vaelab.train import train

RNG = np.random.default_rng(0)


def write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def grey(h, w, value=None):
    return RNG.integers(0, 256, (h, w), dtype=np.uint8) if value is None else np.full((h, w), value, np.uint8)


def rgb(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def folder_datamodule(path, root, channels, size, **kw):
    return ImageDataModule("folder", [channels, size, size], str(root), path=str(path), channels=channels,
                           image_size=size, val_size=kw.pop("val_size", 0.25), test_size=kw.pop("test_size", 0.25),
                           num_classes=kw.pop("num_classes", 10), batch_size=4, **kw)


# --- the conversion ---------------------------------------------------------------------------
def test_the_three_layouts_and_the_value_types_give_the_same_uint8_images():
    """[N, H, W, C] is transposed to [N, C, H, W] (a channel mix-up would fail the pixel check),
    floats x become round(255 x) (floor would fail), integers and bools stay themselves."""
    images = RNG.integers(0, 256, (5, 3, 7, 9), dtype=np.uint8)
    assert torch.equal(as_uint8(images), torch.from_numpy(images))
    assert torch.equal(as_uint8(images.transpose(0, 2, 3, 1)), torch.from_numpy(images))
    assert as_uint8(images.transpose(0, 2, 3, 1))[2, 1, 4, 6] == images[2, 1, 4, 6]
    assert torch.equal(as_uint8(images.astype(np.float32) / 255), torch.from_numpy(images))
    assert as_uint8(np.array([[[0.6, 1.4, 254.6]]]) / 255).tolist() == [[[[1, 1, 255]]]]  # rounded, not floored
    assert torch.equal(as_uint8(torch.from_numpy(images).long()), torch.from_numpy(images))
    assert torch.equal(as_uint8(images[:, 0]), torch.from_numpy(images[:, :1]))  # [N, H, W]
    assert as_uint8(np.array([[[True, False]]])).tolist() == [[[[255, 0]]]]


@pytest.mark.parametrize(("array", "message"), [
    (np.full((2, 4, 4), np.nan, np.float32), r"hold 32 NaN values \(the first in image 0\)"),
    (np.concatenate([np.zeros((1, 4, 4)), np.full((1, 4, 4), np.nan)]), r"hold 16 NaN values \(the first in image 1\)"),
    (np.full((2, 4, 4), 1.5), r"floats from 1.5 to 1.5, outside \[0, 1\]"),
    (np.full((2, 4, 4), -0.1, np.float32), r"outside \[0, 1\]"),
    (np.full((2, 4, 4), 256, np.int64), r"integers from 256 to 256, outside 0..255"),
    (np.full((2, 4, 4), -1, np.int16), r"integers from -1 to -1, outside 0..255"),
    (np.zeros((2, 5, 4, 4)), r"expected \[N, H, W\], \[N, H, W, C\] or \[N, C, H, W\] with C = 1 \(grey\) or 3"),
    (np.zeros((2, 3, 4, 3)), r"could be \[N, C, H, W\] or \[N, H, W, C\]"),
    (np.zeros((0, 4, 4)), "hold no images"),
])
def test_bad_arrays_are_one_line_each(array, message):
    with pytest.raises(DataError, match=message):
        as_uint8(array)


def test_rgb_to_grey_is_pils_luma_and_grey_to_rgb_repeats():
    """Catches other weights (e.g. R and B swapped) and truncation instead of rounding (which
    changes about half the pixels by one level): PIL's own "L" conversion is the reference."""
    pixels = rgb(64, 64)
    ours = convert_channels(torch.from_numpy(pixels).permute(2, 0, 1)[None], 1)[0, 0].numpy()
    pil = np.asarray(Image.fromarray(pixels).convert("L"))
    assert np.abs(ours.astype(int) - pil).max() <= 1 and (ours == pil).mean() > 0.99
    g = torch.from_numpy(grey(5, 6))[None, None]
    assert torch.equal(convert_channels(g, 3), g.expand(1, 3, 5, 6))


@pytest.mark.parametrize(("h", "w"), [(40, 60), (60, 40)])
def test_fit_size_scales_to_cover_and_crops_the_centre(h, w):
    """A ramp along the long side: after halving (to cover 20x20) the centre crop starts 5 pixels
    in, so output pixel j shows input coordinate 2 (j + 5) + 0.5 of value 2 x that. A top-left crop
    (8j + 1) or a stretched image would fail."""
    long_side = max(h, w)
    ramp = np.arange(long_side, dtype=np.float64) * 2
    image = np.broadcast_to(ramp, (h, w)) if w > h else np.broadcast_to(ramp[:, None], (h, w))
    out = fit_size(torch.from_numpy(image.astype(np.uint8).copy())[None, None], 20, 20)[0, 0].double()
    assert out.shape == (20, 20)
    along = out[10] if w > h else out[:, 10]
    expected = 2 * (2 * (torch.arange(20, dtype=torch.float64) + 5) + 0.5)
    assert (along - expected).abs().max() <= 1.0


def test_the_transform_thresholds_binarized_models_at_half_intensity_and_takes_every_input_kind(tmp_path):
    """127 stays 0, 128 becomes 1 (an off-by-one threshold fails); a PIL image, a file, a folder and
    an array of the same pixels give the same input."""
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = ImageTransform([1, 16, 16], binarized=True)(pixels)
    assert x.shape == (1, 1, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[0, 0].flatten(), (torch.arange(256) >= 128).float())
    plain = ImageTransform([1, 16, 16])
    path = write_png(tmp_path / "images" / "a.png", pixels)
    for kind in (Image.fromarray(pixels), path, str(path), tmp_path / "images", [path, path], pixels[None, :, :, None]):
        got = plain(kind)
        assert torch.equal(got[0, 0], torch.from_numpy(pixels).float() / 255), kind
    assert plain([path, path]).shape == (2, 1, 16, 16)
    rgb_model = ImageTransform([3, 8, 8])(pixels)  # grey -> RGB by repetition, 16 -> 8 px
    assert rgb_model.shape == (1, 3, 8, 8) and torch.equal(rgb_model[:, 0], rgb_model[:, 2])
    with pytest.raises(DataError, match="give images as an array or tensor"):
        plain([pixels, pixels])


# --- data=folder -------------------------------------------------------------------------------
def test_a_folder_of_class_subfolders_gives_labels_by_sorted_name_and_a_seeded_split(tmp_path):
    """cat (grey 50) is class 0 and dog (grey 200) class 1 in every split; 16 images: 4 tested, then
    3 of the 12 validated, chosen by split_seed, disjoint."""
    folder = tmp_path / "pets"
    for i in range(8):
        write_png(folder / "dog" / f"{i}.png", grey(10, 12, 200))
        write_png(folder / "cat" / "deeper" / f"{i}.jpg", grey(12, 10, 50))
    write_png(folder / ".hidden" / "x.png", grey(3, 3))  # hidden folders are skipped
    (folder / "dog" / ".DS_Store").write_bytes(b"junk")
    dm = folder_datamodule(folder, tmp_path / "root", 1, 8, num_classes=2)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (9, 3, 4)
    for split in (dm.train_set, dm.val_set, dm.test_set):
        assert split.images.shape[1:] == (1, 8, 8)
        values = split.images.flatten(1)
        assert (values == values[:, :1]).all()  # constant images stay constant through the resize
        assert torch.equal(values[:, 0] == 200, split.labels == 1)
    other = folder_datamodule(folder, tmp_path / "root", 1, 8, num_classes=2, split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.test_set.labels, dm.test_set.labels) or not torch.equal(
        other.val_set.labels, dm.val_set.labels)


def test_given_split_folders_are_used_as_they_are(tmp_path):
    folder = tmp_path / "splits"
    for split, n, value in (("train", 6, 10), ("val", 2, 20), ("test", 3, 30)):
        for c in ("a", "b"):
            for i in range(n):
                write_png(folder / split / c / f"{i}.png", grey(8, 8, value + (c == "b")))
    dm = folder_datamodule(folder, tmp_path / "root", 1, 8, num_classes=2)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 6)
    assert set(dm.val_set.images.flatten(1)[:, 0].tolist()) == {20, 21}
    assert set(dm.test_set.images.flatten(1)[:, 0].tolist()) == {30, 31}
    assert torch.equal(dm.test_set.images.flatten(1)[:, 0] == 31, dm.test_set.labels == 1)
    (folder / "stray.png").write_bytes((folder / "val" / "a" / "0.png").read_bytes())
    with pytest.raises(DataError, match="holds split folders .* and also .*stray.png"):
        scan(folder)


def test_decoded_folders_are_cached_until_a_file_changes(tmp_path, monkeypatch):
    """The second load reads the cache (decoding is made to fail); touching one file changes the key
    (a key without modification times would serve the stale cache and not decode again)."""
    folder = tmp_path / "flat"
    for i in range(6):
        write_png(folder / f"{i}.png", grey(9, 9, 100))
    root = tmp_path / "root"
    first = load_dataset("folder", root, path=str(folder), channels=1, image_size=9)
    assert len(list((root / "folders").glob("flat-*.npz"))) == 1
    import vaelab.data.folder as folder_module

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_module, "read_files", no_decoding)
    again = load_dataset("folder", root, path=str(folder), channels=1, image_size=9)
    assert torch.equal(again.train.images, first.train.images) and again.test is None
    write_png(folder / "3.png", grey(9, 9, 7))
    later = time.time() + 10
    os.utime(folder / "3.png", (later, later))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("folder", root, path=str(folder), channels=1, image_size=9)


def test_bad_folders_are_one_line_each(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no images \(.png, .jpg"):
        scan(tmp_path / "empty")
    with pytest.raises(DataError, match="is not a folder"):
        scan(tmp_path / "missing")
    junk = tmp_path / "junk"
    for i in range(3):
        write_png(junk / f"{i}.png", grey(8, 8))
    (junk / "notes.txt").write_text("x")
    (junk / "data.csv").write_text("x")
    with pytest.raises(DataError, match=r"2 of 5 files in .*junk are not images .*: data.csv, notes.txt; move them"):
        scan(junk)
    (junk / "notes.txt").unlink()
    (junk / "data.csv").unlink()
    (junk / "broken.png").write_bytes(b"not a png")
    (junk / "cut.png").write_bytes((junk / "0.png").read_bytes()[:40])
    with pytest.raises(DataError, match=r"2 of 5 image files could not be read: broken.png \(\w+\), cut.png"):
        FolderSource(junk, tmp_path / "root", 1, 8).try_load(junk)
    mixed = tmp_path / "mixed"
    write_png(mixed / "a" / "0.png", grey(8, 8))
    write_png(mixed / "b.png", grey(8, 8))
    with pytest.raises(DataError, match="holds image files directly, but the class labels come from subfolders"):
        scan(mixed)
    write_png(tmp_path / "c" / "empty_class" / "x" / "notes.png", grey(8, 8))
    (tmp_path / "c" / "full").mkdir()
    with pytest.raises(DataError, match="the class folder .*full holds no images"):
        scan(tmp_path / "c")


def user_error_of(call):
    from vaelab.errors import user_error

    with pytest.raises(Exception) as info:
        call()
    error = user_error(info.value)
    assert error is not None, info.value
    return str(error)


def test_the_config_reads_channels_size_and_classes_from_a_folder(tmp_path):
    """data.shape and the MLP's input size follow the images: RGB, the smallest side 30 px, 2 classes;
    mixed grey and RGB images are one line, unless data.channels converts them."""
    folder = tmp_path / "rgb"
    for i in range(3):
        write_png(folder / "x" / f"{i}.png", rgb(30 + i, 40))
        write_png(folder / "y" / f"{i}.png", rgb(35, 31 + i))
    cfg = compose_config(tmp_path, ["data=folder", f"data.path={folder}"])
    assert list(cfg.data.shape) == [3, 30, 30] and cfg.data.num_classes == 2
    assert instantiate(cfg.model).encoder.body[2].in_features == 3 * 30 * 30
    write_png(folder / "y" / "grey.png", grey(32, 32))
    cfg = compose_config(tmp_path, ["data=folder", f"data.path={folder}"])
    message = user_error_of(lambda: list(cfg.data.shape))
    assert "mixes 1 grey images (y/grey.png) and 6 RGB images (x/0.png, x/1.png, x/2.png and 3 more): set " \
           "data.channels=1 or data.channels=3" in message
    cfg = compose_config(tmp_path, ["data=folder", f"data.path={folder}", "data.channels=1"])
    assert list(cfg.data.shape) == [1, 30, 30]


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("model", ["conv", "resnet"])
def test_the_conv_models_take_28_32_and_64_pixels_and_name_the_sizes_they_take(tmp_path, model, size):
    folder = tmp_path / "imgs"
    write_png(folder / "0.png", rgb(size, size))
    cfg = compose_config(tmp_path, ["data=folder", f"data.path={folder}", f"model={model}"])
    vae = instantiate(cfg.model)
    x = torch.rand(2, 3, size, size)
    assert vae.reconstruct(x).shape == x.shape
    cfg = compose_config(tmp_path, ["data=folder", f"data.path={folder}", f"model={model}", "data.image_size=30"])
    with pytest.raises(ConfigError, match=rf"model={model} cannot take 30x30 images: its 2 stride-2 stages need a "
                                          r"height and width divisible by 4 \(the nearest: 28, 32 px\).*model=mlp or "
                                          r"model=hierarchical, which take any size"):
        instantiate(cfg.model)


def test_each_folder_gets_its_own_cached_domain_classifier(tmp_path):
    """The sample-quality classifier's cache key names the user's data (two folders of the same
    shape would otherwise share one); the datasets without a path keep their keys."""
    from vaelab.domain_classifier import cache_path

    def datamodule(path):
        return folder_datamodule(path, tmp_path, 1, 8) if path else ImageDataModule("mnist", [1, 28, 28], str(tmp_path))

    a, b = cache_path(datamodule(tmp_path / "a"), {}), cache_path(datamodule(tmp_path / "b"), {})
    assert a != b and a.parent == b.parent == tmp_path / "domain_classifier"
    assert cache_path(datamodule(tmp_path / "a"), {}) == a
    mnist = datamodule(None)  # its key as before: the data settings alone
    settings = {"name": "mnist", "shape": [1, 28, 28], "val_size": 5000, "split_seed": 0, "binarize": "none",
                "binarize_seed": 0, "exclude_classes": [], "num_classes": 10}
    digest = hashlib.sha256(json.dumps({"data": settings, "classifier": {}}, sort_keys=True).encode()).hexdigest()
    assert cache_path(mnist, {}).name == f"mnist-{digest[:12]}.pt"


# --- data=array --------------------------------------------------------------------------------
def test_an_npz_of_float_nhwc_images_with_labels(tmp_path):
    """Pixels k/255 stored as float [N, H, W, 1] come back as k in [N, 1, H, W], each with its label
    through the split; the config reads 1 channel, 12 px and 4 classes."""
    images = RNG.integers(0, 256, (20, 12, 14, 1), dtype=np.uint8)
    labels = np.arange(20) % 4
    images[:, 0, 0, 0] = labels * 50  # each image carries its label in a pixel
    np.savez(tmp_path / "data.npz", images=images.astype(np.float32) / 255, labels=labels)
    cfg = compose_config(tmp_path, ["data=array", f"data.path={tmp_path / 'data.npz'}", "data.image_size=14"])
    assert cfg.data.channels == 1 and cfg.data.num_classes == 4
    assert list(compose_config(tmp_path, ["data=array", f"data.path={tmp_path / 'data.npz'}"]).data.shape) == [1, 12, 12]
    data = load_dataset("array", tmp_path, path=str(tmp_path / "data.npz"), channels=1, image_size=12)
    assert data.train.images.shape == (20, 1, 12, 12)  # 12x14 center-cropped to 12x12: columns 1..12
    assert torch.equal(data.train.images, torch.from_numpy(images.transpose(0, 3, 1, 2)[:, :, :, 1:13]))
    dm = ImageDataModule("array", [1, 12, 14], str(tmp_path), path=str(tmp_path / "data.npz"), channels=1,
                         image_size=12, val_size=0.25, test_size=0.2, num_classes=4)
    with pytest.raises(DataError, match=r"have shape \[1, 12, 12\] but data.shape is \[1, 12, 14\]"):
        dm.setup("fit")


def test_an_npy_without_labels_and_bad_array_files(tmp_path):
    np.save(tmp_path / "plain.npy", RNG.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8))
    cfg = compose_config(tmp_path, ["data=array", f"data.path={tmp_path / 'plain.npy'}"])
    assert list(cfg.data.shape) == [3, 8, 8] and cfg.data.num_classes == 1
    dm = ImageDataModule("array", [3, 8, 8], str(tmp_path), path=str(tmp_path / "plain.npy"), channels=3,
                         image_size=8, val_size=2, test_size=0.3, num_classes=1)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5, 2, 3)
    assert dm.train_set.labels.tolist() == [0] * 5
    np.savez(tmp_path / "keys.npz", a=np.zeros((2, 4, 4)), b=np.zeros(2))
    np.savez(tmp_path / "labels.npz", x=np.zeros((3, 4, 4)), y=np.zeros(2, int))
    np.savez(tmp_path / "nan.npz", x=np.full((3, 4, 4), np.nan))
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    for name, message in (("keys.npz", "holds the arrays a, b: name the images 'images'"),
                          ("labels.npz", r"the labels must be integers \[N\] for the 3 images"),
                          ("nan.npz", "hold 48 NaN values"), ("broken.npy", "is corrupt or not a NumPy file"),
                          ("missing.npy", "does not exist")):
        with pytest.raises(DataError, match=message):
            load_dataset("array", tmp_path, path=str(tmp_path / name), channels=1, image_size=4)
    with pytest.raises(ConfigError, match="data=array needs data.path"):
        load_dataset("array", tmp_path, path=None, channels=1, image_size=4)


# --- end to end ---------------------------------------------------------------------------------
def mnist_digits(n: int, classes=(0, 1)):
    data = load_dataset("mnist", DATA_ROOT, [MIRROR], download=False).train
    keep = torch.isin(data.labels, torch.tensor(classes)).nonzero().flatten()[:n]
    return data.images[keep, 0].numpy(), data.labels[keep].numpy()


@pytest.mark.slow
def test_training_on_a_folder_of_pngs_with_class_subfolders(tmp_path):
    """600 MNIST zeros and ones as 28 px PNGs in class folders, resized to 32 px for the conditional
    conv model: the run learns (an untrained model scores about 32 x 32 x ln 2 = 710 nats)."""
    images, labels = mnist_digits(600)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        write_png(tmp_path / "digits" / ("zero", "one")[label] / f"{i:04d}.png", image)
    cfg = compose_config(tmp_path, ["data=folder", f"data.path={tmp_path / 'digits'}", "data.image_size=32",
                                    "model=conv", "model.conditional=true", "trainer.max_epochs=2",
                                    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data.batch_size=32",
                                    "callbacks.latent_embedding=null", "logger=none"])
    assert list(cfg.data.shape) == [1, 32, 32] and cfg.data.num_classes == 2
    metrics = train(cfg)
    assert metrics["test/nelbo"] < 300
    assert read_metrics(tmp_path / "run")["test/nelbo"] == pytest.approx(metrics["test/nelbo"])


@pytest.mark.slow
def test_training_on_an_array_file(tmp_path):
    """1,000 MNIST digits as floats [N, 28, 28, 1] with labels in an .npz train the MLP."""
    images, labels = mnist_digits(1000, classes=tuple(range(10)))
    np.savez(tmp_path / "digits.npz", images=images[..., None].astype(np.float32) / 255, labels=labels)
    cfg = compose_config(tmp_path, ["data=array", f"data.path={tmp_path / 'digits.npz'}", "trainer.max_epochs=3",
                                    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "data.batch_size=32",
                                    "callbacks.latent_embedding=null", "logger=none"])
    assert list(cfg.data.shape) == [1, 28, 28] and cfg.data.num_classes == 10
    metrics = train(cfg)
    assert metrics["test/nelbo"] < 250  # untrained: about 28 x 28 x ln 2 = 543 nats
