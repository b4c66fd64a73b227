"""dSprites and colour dSprites: the rendered factor grid, its cache, DeepMind's file, the split, the nets at 64 px."""

import math

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, MIRROR, compose_config

from vaelab.data import dsprites
from vaelab.data.datamodule import ImageDataModule
from vaelab.data.device_loader import DeviceBatches
from vaelab.data.dsprites import (
    CACHE_FILE,
    DEEPMIND_FILE,
    FACTOR_SIZES,
    FACTOR_VALUES,
    SHAPES,
)
from vaelab.data.packed import PackedImages
from vaelab.data.sources import load_dataset
from vaelab.errors import ConfigError, DataError
from vaelab.train import train

SQUARE, ELLIPSE, HEART = range(3)


@pytest.fixture(scope="module")
def grid():
    """The whole grid (rendered into the project's data/ folder on first use, then read from the cache)."""
    return load_dataset("dsprites", DATA_ROOT, [], download=False)


def image(grid, shape, scale, orientation, x, y) -> np.ndarray:
    """One grid image by factor classes: bool [64, 64]."""
    factors = np.array([[shape, scale, orientation, x, y]])
    return grid.factor_data.images_for(factors, np.random.default_rng(0))[0, 0].numpy() > 0.5


def moments(im: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Centroid (x, y) in pixel coordinates (pixel centres at +0.5) and the 2x2 second central moments."""
    rows, cols = np.nonzero(im)
    xy = np.stack([cols + 0.5, rows + 0.5])
    return xy[0].mean(), xy[1].mean(), np.cov(xy, bias=True)


def rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def test_the_grid_has_deepmind_size_order_and_factor_values(grid):
    assert len(grid.train.images) == 737_280 == math.prod(FACTOR_SIZES) and grid.test is None
    assert grid.train.images.shape == (737_280, 1, 64, 64) and grid.train.images.nbytes == 737_280 * 512
    factors = grid.train.factors
    assert factors[1].tolist() == [0, 0, 0, 0, 1] and factors[32].tolist() == [0, 0, 0, 1, 0]  # pos_y fastest
    assert factors[-1].tolist() == [2, 5, 39, 31, 31]
    assert torch.equal(grid.train.labels, factors[:, 0])  # the label is the shape
    data = grid.factor_data
    assert data.factor_sizes == FACTOR_SIZES and data.names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    np.testing.assert_allclose(data.values[1], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert data.values[2][0] == 0 and data.values[2][-1] == pytest.approx(2 * math.pi)  # as DeepMind's latents_values
    np.testing.assert_allclose(data.values[3], np.arange(32) / 31)
    for shape in range(3):  # orientations 0 and 2 pi are the same angle, so the same image
        assert np.array_equal(image(grid, shape, 5, 0, 7, 20), image(grid, shape, 5, 39, 7, 20))


def test_scale_changes_the_area_by_its_square(grid):
    """Areas averaged over the 40 orientations (to average out the pixel grid): area(s) / area(1)
    = s^2 within 3%, and the documented sizes at scale 1 (square 16 px wide, ellipse semi-axes
    9.6 x 4.8 px) within 2%. Catches: a size linear in sqrt(scale) or in scale^2, another base size."""
    for shape in range(3):
        area = np.array([[image(grid, shape, s, o, 0, 0).sum() for o in range(40)] for s in range(6)]).mean(axis=1)
        np.testing.assert_allclose(area / area[-1], FACTOR_VALUES[1] ** 2, rtol=0.03, err_msg=SHAPES[shape])
        if shape == SQUARE:
            assert area[-1] == pytest.approx(16**2, rel=0.02)
        if shape == ELLIPSE:
            assert area[-1] == pytest.approx(math.pi * 9.6 * 4.8, rel=0.02)


def test_position_moves_the_centroid_one_pixel_per_step(grid):
    """The centroid sits at (16 + pos_x, 16 + pos_y) px (x along columns, y down the rows), for
    every shape, scale and orientation; a position step is an exact one-pixel shift. Catches: x and
    y exchanged, a step other than one pixel, the heart turned about a point other than its centroid."""
    rng = np.random.default_rng(0)
    for shape, scale, orientation, x, y in grid.factor_data.sample_factors(300, rng):
        cx, cy, _ = moments(image(grid, shape, scale, orientation, x, y))
        assert (cx, cy) == (pytest.approx(16 + x, abs=0.3), pytest.approx(16 + y, abs=0.3))
    base = image(grid, HEART, 3, 11, 4, 9)
    assert np.array_equal(image(grid, HEART, 3, 11, 5, 9), np.roll(base, 1, axis=1))
    assert np.array_equal(image(grid, HEART, 3, 11, 4, 10), np.roll(base, 1, axis=0))


def test_orientation_rotates_the_second_moments(grid):
    """Second moments C(theta) = R(theta) C(0) R(theta)^T (rotation in x-right, y-down pixel
    coordinates) within the pixel grid's 6%, and the ellipse's long axis at angle theta (mod pi)
    within 2 degrees; the square (isotropic moments) is 16 (|cos| + |sin|) px wide, less up to a
    pixel on each side where a corner covers under half a pixel. Catches: the
    opposite sense of rotation, a rotation by another angle (degrees for radians, half angles)."""
    for shape in range(3):
        c0 = moments(image(grid, shape, 5, 0, 0, 0))[2]
        for o, angle in enumerate(FACTOR_VALUES[2]):
            c = moments(image(grid, shape, 5, o, 0, 0))[2]
            expected = rotation(angle) @ c0 @ rotation(angle).T
            assert np.linalg.norm(c - expected) < 0.06 * np.linalg.norm(c0), (SHAPES[shape], o)
            if shape == ELLIPSE:
                long_axis = np.linalg.eigh(c)[1][:, 1]
                error = (math.atan2(long_axis[1], long_axis[0]) - angle + math.pi / 2) % math.pi - math.pi / 2
                assert abs(math.degrees(error)) < 2.0, o
            if shape == SQUARE:
                width = np.ptp(np.flatnonzero(image(grid, shape, 5, o, 0, 0).any(axis=0))) + 1
                corners = 16 * (abs(math.cos(angle)) + abs(math.sin(angle)))  # less the corner pixels under half covered
                assert corners - 2 <= width <= corners + 1, o


def test_colour_dsprites_colours_each_sprite_and_the_metrics_draw_new_colours(grid):
    colour = load_dataset("color_dsprites", DATA_ROOT, [], download=False)
    images = colour.train.images
    assert images.shape == (737_280, 3, 64, 64) and images.nbytes == 737_280 * (512 + 3)
    picked = torch.tensor([0, 1, 500_000, 737_279])
    rgb, mask = images[picked].unpacked(), grid.train.images[picked].mask()
    assert torch.equal(rgb.amax(dim=1, keepdim=True) > 0, mask)  # the same sprites
    on = rgb.permute(1, 0, 2, 3)[:, mask[:, 0]]  # [3, on pixels]
    assert on.min() >= 128  # every channel in [0.5, 1]
    assert len({tuple(c) for c in images.colours[picked].tolist()}) == 4
    assert images.colours.float().mean().item() == pytest.approx(0.75 * 255, abs=1.0)  # uniform on [0.5, 1]
    factors = colour.factor_data.sample_factors(8, np.random.default_rng(0))
    first = colour.factor_data.images_for(factors, np.random.default_rng(1))
    second = colour.factor_data.images_for(factors, np.random.default_rng(2))
    assert first.shape == (8, 3, 64, 64) and torch.equal(first > 0, second > 0) and not torch.equal(first, second)
    assert first[first > 0].min() >= 0.5 and first.max() <= 1.0


def test_the_rendering_is_cached_once_and_read_back(tmp_path, grid, monkeypatch):
    """Cache round trip: the first load renders into <root>/dsprites/ (atomically: no temporary file
    left), the next reads the same bits without rendering; a truncated cache is a clear error."""
    first = load_dataset("dsprites", tmp_path, [], download=False)
    folder = tmp_path / "dsprites"
    assert [p.name for p in folder.iterdir()] == [CACHE_FILE]
    monkeypatch.setattr(dsprites, "render_grid", lambda: pytest.fail("rendered again instead of reading the cache"))
    again = load_dataset("dsprites", tmp_path, [], download=False)
    assert torch.equal(again.train.images.bits, first.train.images.bits)
    assert torch.equal(first.train.images.bits, grid.train.images.bits)  # deterministic: the same as data/'s copy
    cache = folder / CACHE_FILE
    cache.write_bytes(cache.read_bytes()[:100_000])
    with pytest.raises(DataError, match=rf"{CACHE_FILE} is corrupt or truncated .*delete it to render dSprites again"):
        load_dataset("dsprites", tmp_path, [], download=False)


def write_deepmind_file(path, images: np.ndarray, classes: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, imgs=images, latents_classes=classes, latents_values=classes.astype(np.float64))


def test_deepmind_file_is_read_in_place_of_the_rendering(tmp_path):
    """A small fake of DeepMind's file (a 1 x 2 x 3 x 2 x 2 grid of random 0/1 images, its 6
    latents_classes columns colour first) reads back pixel for pixel; one out of grid order, or
    of the wrong size, is refused naming the file. In data.root/dsprites/ it is read rather than
    anything rendered."""
    sizes = (2, 3, 2, 2, 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 2, size=(24, 64, 64), dtype=np.uint8)
    classes = np.concatenate([np.zeros((24, 1), dtype=np.int64), dsprites.grid_classes(sizes)], axis=1)
    path = tmp_path / "fake" / DEEPMIND_FILE
    write_deepmind_file(path, images, classes)
    bits = dsprites.read_deepmind(path, sizes)
    assert np.array_equal(np.unpackbits(bits, axis=1).reshape(24, 64, 64), images)
    write_deepmind_file(path, images, classes[::-1])
    with pytest.raises(DataError, match="latents_classes are not the dSprites grid in its order"):
        dsprites.read_deepmind(path, sizes)
    root = tmp_path / "root"
    write_deepmind_file(root / "dsprites" / DEEPMIND_FILE, images, classes)
    with pytest.raises(DataError, match=rf"{DEEPMIND_FILE} holds images \[24, 64, 64\] .* not DeepMind's dSprites"):
        load_dataset("dsprites", root, [], download=False)
    assert not (root / "dsprites" / CACHE_FILE).exists()


def test_packed_images_read_like_the_uint8_tensor():
    """Packing round trip in np.packbits' layout (that of the cache and of DeepMind's file read),
    indexing, and the on-device batches (DeviceBatches) of packed images equal those of the same
    images as a uint8 tensor, batch for batch. Catches: the bits of a byte in the other order."""
    generator = torch.Generator().manual_seed(0)
    binary = (torch.rand(50, 1, 8, 8, generator=generator) < 0.3).to(torch.uint8) * 255
    packed = PackedImages.pack(binary)
    assert np.array_equal(packed.bits.numpy(), np.packbits(binary.numpy().reshape(50, -1) > 0, axis=1))
    assert packed.shape == binary.shape and packed.nbytes == 50 * 8
    assert torch.equal(packed.unpacked(), binary) and torch.equal(packed[[3, 1]].unpacked(), binary[[3, 1]])
    assert torch.equal(packed[torch.arange(50) % 2 == 0].float(), binary[::2].float())
    labels = torch.arange(50)
    for a, b in zip(DeviceBatches(packed, labels, 16, shuffle=True, seed=3),
                    DeviceBatches(binary, labels, 16, shuffle=True, seed=3), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    colours = torch.randint(128, 256, (50, 3), dtype=torch.uint8, generator=generator)
    rgb = PackedImages(packed.bits, (8, 8), colours).unpacked()
    assert torch.equal(rgb, (binary > 0) * colours[:, :, None, None])


@pytest.fixture(scope="module")
def datamodule():
    dm = ImageDataModule("dsprites", [1, 64, 64], str(DATA_ROOT), download=False, val_size=10_000,
                         test_size=10_000, num_classes=3, split_seed=0)
    dm.setup()
    return dm


def test_the_seeded_split_holds_out_a_test_set_and_keeps_the_factors(datamodule):
    """No official split: test_size then val_size images chosen by split_seed, disjoint, covering
    the grid, each image still with its own factors (checked against the grid's images)."""
    sets = (datamodule.train_set, datamodule.val_set, datamodule.test_set)
    assert [len(s) for s in sets] == [717_280, 10_000, 10_000]
    data = datamodule.factor_data
    positions = [data.index_of(s.factors.numpy()) for s in sets]
    assert np.array_equal(np.sort(np.concatenate(positions)), np.arange(737_280))
    for s, where in zip(sets, positions, strict=True):
        assert torch.equal(s.labels, s.factors[:, 0])
        picked = np.random.default_rng(0).choice(len(s), 64, replace=False)
        assert torch.equal(s.images[torch.from_numpy(picked)].float() / 255,
                           data.images_for(s.factors[picked].numpy(), np.random.default_rng(0)))
    other = ImageDataModule("dsprites", [1, 64, 64], str(DATA_ROOT), download=False, val_size=10, test_size=10,
                            num_classes=3, split_seed=1)
    other.setup()
    assert not torch.equal(other.test_set.factors, datamodule.test_set.factors[:10])


def test_split_settings_that_do_not_fit_the_dataset_are_refused():
    with pytest.raises(ConfigError, match="dsprites has no official test set: set data.test_size"):
        ImageDataModule("dsprites", [1, 64, 64], str(DATA_ROOT), download=False, num_classes=3).setup()
    with pytest.raises(ConfigError, match="dsprites is binary already: use data.binarize=none"):
        ImageDataModule("dsprites", [1, 64, 64], str(DATA_ROOT), download=False, num_classes=3, test_size=10,
                        binarize="static").setup()
    with pytest.raises(ConfigError, match="mnist has an official test set: leave data.test_size=null"):
        ImageDataModule("mnist", [1, 28, 28], str(DATA_ROOT), mirror=MIRROR, download=False, test_size=10).setup()


@pytest.mark.parametrize(("data", "model", "extra"), [
    ("dsprites", "conv", []),
    ("dsprites", "conv", ["model.encoder.channels=[32,32,64,64]"]),  # disentanglement_lib's 4 stride-2 layers
    ("color_dsprites", "resnet", []),
])
def test_the_conv_nets_train_on_64_pixel_factor_data(tmp_path, data, model, extra):
    """Composed as the CLI would (the conv nets halve 64 px once per stage: 16 x 16 features with
    two stages, 4 x 4 with four), with the default callbacks drawing their pictures of 64 px images."""
    cfg = compose_config(tmp_path, [f"data={data}", f"model={model}", "debug=fast_dev_run", "data.batch_size=16",
                                    "data.eval_batch_size=16", "model.latent_dim=10", *extra])
    assert cfg.data.shape == [3 if data == "color_dsprites" else 1, 64, 64] and cfg.data.num_classes == 3
    metrics = train(cfg)
    assert all(math.isfinite(metrics[k]) for k in ("train/loss", "val/nelbo", "test/nelbo"))


def test_the_metrics_read_the_factors_off_the_grid_images(grid):
    """End to end through FactorData.images_for: a representation made of the sprite's centroid,
    the square root of its area and a noise dimension is labelled pos_x, pos_y, scale and nothing."""
    from vaelab.disentanglement import best_factor_per_latent, sample_codes

    centres = torch.arange(64) + 0.5

    def representation(x):
        mass = x[:, 0]
        area = mass.sum((1, 2))
        noise = torch.randn(len(x), generator=torch.Generator().manual_seed(int(area.sum())))
        return torch.stack([(mass.sum(1) * centres).sum(1) / area, (mass.sum(2) * centres).sum(1) / area,
                            area.sqrt(), noise], dim=1)

    codes, factors = sample_codes(representation, grid.factor_data, 2000, np.random.default_rng(0))
    labels = best_factor_per_latent(codes, factors, grid.factor_data.names)
    assert [name for name, _ in labels] == ["pos_x", "pos_y", "scale", None]
    assert labels[0][1] > 0.8 and labels[1][1] > 0.8  # 32 positions in 20 bins: log 20 / log 32 at most
