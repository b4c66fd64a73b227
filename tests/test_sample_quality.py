"""Sample quality: the Frechet distance against its closed form, precision/recall against an
independent k-NN computation, the domain classifier's cache, and the distances on real MNIST."""

import logging
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, MIRROR

from vaelab import domain_classifier as dc
from vaelab.data.datamodule import ImageDataModule, TensorImages
from vaelab.data.sources import Split
from vaelab.errors import ConfigError
from vaelab.sample_quality import frechet_distance, inception_network, precision_recall


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    """In 2-D, tr (S1 S2)^(1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)), so
    FD = |m1 - m2|^2 + tr S1 + tr S2 - 2 sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) in closed form.
    S1 and S2 do not commute, so an FD with tr(S1^(1/2) S2^(1/2)), with the square roots of the
    diagonals or without the factor 2 fails the exact comparison on the sample moments, and a
    distance of the real set to itself (the generated features never used) fails both."""
    generator = torch.Generator().manual_seed(0)
    m1, m2 = torch.tensor([0.0, 1.0]), torch.tensor([1.5, -0.5])
    a1, a2 = torch.tensor([[1.0, 0.0], [0.8, 0.6]]), torch.tensor([[0.5, -0.7], [0.0, 1.3]])
    real = m1 + torch.randn(40000, 2, generator=generator) @ a1.T
    fake = m2 + torch.randn(40000, 2, generator=generator) @ a2.T

    def closed_form(mu1, s1, mu2, s2):
        cross = torch.sqrt(torch.trace(s1 @ s2) + 2 * torch.sqrt(torch.det(s1) * torch.det(s2)))
        return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)

    fd = frechet_distance(real, fake)
    sample = closed_form(real.double().mean(0), torch.cov(real.double().T), fake.double().mean(0),
                         torch.cov(fake.double().T))
    assert fd == pytest.approx(sample, rel=1e-9)
    population = closed_form(m1.double(), (a1 @ a1.T).double(), m2.double(), (a2 @ a2.T).double())
    assert fd == pytest.approx(population, rel=0.02)
    assert population > 5  # (far from 0, so that the comparisons mean something)


def test_precision_recall_match_an_independent_knn_computation():
    """Against scikit-learn's nearest neighbours: catches a radius to the k-th point counting the
    point itself (k instead of k + 1), precision and recall swapped, and each manifold's radii
    taken from the other set."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(1)
    real = rng.normal(size=(600, 5))
    fake = rng.normal(size=(500, 5)) * 1.5 + 0.4
    k = 3

    def covered(queries, points):
        radius = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)[0][:, k]
        distances = np.linalg.norm(queries[:, None] - points[None], axis=-1)
        return (distances <= radius[None]).any(1).mean()

    precision, recall = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk=128)
    assert precision == pytest.approx(covered(fake, real), abs=1e-12)
    assert recall == pytest.approx(covered(real, fake), abs=1e-12)
    assert 0.2 < precision < 0.95 and 0.2 < recall < 0.99 and precision < recall  # the fakes are wider


def test_precision_recall_on_a_line_by_hand():
    """Real points 0..9 (each point's k=1 radius is 1), fake points 0.5, 10.5 and 20 (radii 10, 9.5, 9.5):
    only 0.5 lies in a real ball (precision 1/3) and every real point lies in a fake ball (recall 1)."""
    real = torch.arange(10.0).unsqueeze(1)
    fake = torch.tensor([[0.5], [10.5], [20.0]])
    assert precision_recall(real, fake, k=1) == pytest.approx((1 / 3, 1.0))
    assert precision_recall(real, real, k=1) == (1.0, 1.0)
    with pytest.raises(ConfigError, match="sample_quality.k=3 needs more than 3 images"):
        precision_recall(real, fake, k=3)


def synthetic_datamodule(root, n=600, binarize="none"):
    """Two classes of 8 x 8 images, a bright top half (0) or a bright bottom half (1), with noise."""
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.arange(count) % 2
        images = torch.rand(count, 1, 8, 8, generator=generator) * 0.4
        images[labels == 0, :, :4] += 0.6
        images[labels == 1, :, 4:] += 0.6
        return TensorImages(Split((images * 255).to(torch.uint8), labels))

    train, test = split(n), split(n // 3)
    return SimpleNamespace(name="toy", shape=(1, 8, 8), root=str(root), val_size=0, split_seed=0,
                           binarize=binarize, binarize_seed=0, exclude_classes=[], num_classes=2,
                           train_set=train, test_set=test, setup=lambda stage=None: None)


def test_domain_classifier_is_trained_once_then_read_from_its_cache(tmp_path, monkeypatch):
    datamodule = synthetic_datamodule(tmp_path)
    first = dc.load_or_train(datamodule, epochs=1, batch_size=32, hidden=16)
    assert first.test_accuracy > 0.95
    (cached,) = (tmp_path / "domain_classifier").glob("toy-*.pt")
    assert torch.load(cached, weights_only=True)["test_accuracy"] == first.test_accuracy
    assert not list((tmp_path / "domain_classifier").glob(".*.tmp"))  # written atomically

    monkeypatch.setattr(dc, "_fit", lambda *args: pytest.fail("the cached classifier was trained again"))
    again = dc.load_or_train(datamodule, epochs=1, batch_size=32, hidden=16)
    assert again.test_accuracy == first.test_accuracy
    for name, value in first.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value)
    x = datamodule.test_set.images.float() / 255
    torch.testing.assert_close(again.features(x), first.features(x))
    # other data or classifier settings are another cache entry
    settings = {"epochs": 1, "batch_size": 32, "lr": 1e-3, "channels": [16, 32], "hidden": 16, "seed": 0}
    assert dc.cache_path(datamodule, settings) == cached
    assert dc.cache_path(datamodule, {**settings, "hidden": 32}) != cached
    assert dc.cache_path(synthetic_datamodule(tmp_path, binarize="static"), settings) != cached


def test_inception_fid_is_skipped_in_one_line_when_torch_fidelity_its_weights_or_a_gpu_are_missing(
        monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="vaelab")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    assert inception_network("on", None, gpu) is None
    assert caplog.messages == ["samples/fid skipped: the Inception network needs torch-fidelity (pip install torch-fidelity)"]
    caplog.clear()
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    assert inception_network("auto", str(tmp_path / "none.pth"), gpu) is None
    assert len(caplog.messages) == 1 and f"no Inception weights at {tmp_path / 'none.pth'}" in caplog.messages[0]
    caplog.clear()
    (tmp_path / "weights.pth").touch()
    assert inception_network("auto", str(tmp_path / "weights.pth"), cpu) is None
    assert len(caplog.messages) == 1 and caplog.messages[0].startswith("samples/fid skipped on the CPU")
    assert inception_network("off", None, gpu) is None
    with pytest.raises(ConfigError, match="sample_quality.fid=yes is unknown"):
        inception_network("yes", None, gpu)


@pytest.mark.slow
def test_on_mnist_two_halves_of_the_test_set_are_close_and_noise_or_shifted_digits_are_far():
    """With a domain classifier (a light one, trained once in ~15 s and cached under the project's
    data folder, shared with test_eval_tasks): FD(half, other half) is near 0 (0.43 when written)
    and far below FD(half, noise) (564) and FD(half, digits shifted by 3 pixels) (95);
    precision/recall of a half against the other are high (0.91), of noise near 0. A distance
    that reused one set for both sides would be 0 everywhere and fail."""
    datamodule = ImageDataModule(name="mnist", shape=[1, 28, 28], root=str(DATA_ROOT), mirror=MIRROR)
    classifier = dc.load_or_train(datamodule, epochs=1, channels=[8, 16], hidden=64)
    assert classifier.test_accuracy > 0.9
    images = datamodule.test_set.images.float() / 255
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    first, second = images[order[:5000]], images[order[5000:]]
    noise = torch.rand(first.shape, generator=generator)
    shifted = torch.roll(second, shifts=(3, 3), dims=(2, 3))
    with torch.no_grad():
        f1, f2, fn, fs = (classifier.features(x) for x in (first, second, noise, shifted))
    halves, to_noise, to_shifted = (frechet_distance(f1, f) for f in (f2, fn, fs))
    scale = torch.cov(f1.double().T).trace().item()  # the features' total variance
    assert halves < 0.01 * scale
    assert halves < 0.02 * to_noise and halves < 0.1 * to_shifted, (halves, to_noise, to_shifted)
    precision, recall = precision_recall(f1, f2)
    assert precision > 0.8 and recall > 0.8
    assert precision_recall(f1, fn)[0] < 0.1
