"""vaelab.predict: a checkpoint on a user's folder, array or a dataset name, each task's files
against the VAE's own methods, the anomaly score of a trained model, and bad input in one line."""

import csv
import math

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, MIRROR, compose_config, run_cli
from omegaconf import OmegaConf
from PIL import Image

import vaelab
from vaelab.anomaly import auroc
from vaelab.data.sources import load_dataset
from vaelab.errors import ConfigError, DataError
from vaelab.module import VAEModule
from vaelab.predict import predict
from vaelab.train import train

RNG = np.random.default_rng(0)


def save_untrained(tmp_path, overrides=()):
    """A checkpoint as vaelab.train writes it (the run config and the weights) of an untrained small MLP VAE."""
    cfg = compose_config(tmp_path / "train", ["model.latent_dim=4", "model.encoder.hidden=[32]",
                                              "model.decoder.hidden=[32]", *overrides])
    config = OmegaConf.to_container(cfg, resolve=True)
    module = VAEModule.from_config(config)
    path = tmp_path / "model.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config}}, path)
    return path


def run_predict(tmp_path, ckpt, *overrides):
    cfg = compose_config(tmp_path / "predict", [f"ckpt_path={ckpt}", "trainer=cpu", "predict.batch_size=3",
                                                *overrides], config_name="predict")
    predict(cfg)
    return tmp_path / "predict" / "run"


def png(path):
    return np.asarray(Image.open(path))


@pytest.fixture
def folder(tmp_path):
    """Seven images of other sizes and colours than the model's, one in a subfolder."""
    root = tmp_path / "mine"
    (root / "more").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(RNG.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    Image.fromarray(RNG.integers(0, 256, (50, 28), dtype=np.uint8)).save(root / "more" / "x.jpg")
    return root


def test_encode_writes_each_named_images_posterior(tmp_path, folder):
    """Row by row, in batches of 3, the posterior of the file named in that row (names or rows out of
    step, or logvar written as std, fail)."""
    ckpt = save_untrained(tmp_path)
    out = run_predict(tmp_path, ckpt, f"input={folder}", "task=encode")
    latents = np.load(out / "latents.npz")
    assert sorted(latents.files) == ["logvar", "mean", "names"]
    assert latents["names"].tolist() == ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "more/x.jpg"]
    vae = vaelab.load(ckpt)
    for row, name in enumerate(latents["names"]):
        q = vae.encode(vae.transform(folder / name))
        np.testing.assert_allclose(latents["mean"][row], q.mean[0].detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(latents["logvar"][row], q.logvar[0].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_reconstruct_writes_grids_of_inputs_above_their_reconstructions(tmp_path, folder):
    ckpt = save_untrained(tmp_path)
    out = run_predict(tmp_path, ckpt, f"input={folder}", "task=reconstruct", "predict.grid_size=4")
    grids = sorted(out.glob("reconstructions_*.png"))
    assert [g.name for g in grids] == ["reconstructions_000.png", "reconstructions_001.png"]
    vae = vaelab.load(ckpt)
    x = vae.transform(sorted(folder.glob("*.png")))
    expected = (vae.reconstruct(x).detach() * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    first = png(grids[0])[:, :, 0]  # make_grid: 2-pixel borders, tiles of 28
    assert first.shape == (2 + 2 * 30, 2 + 4 * 30)
    for k in range(4):
        assert np.array_equal(first[2:30, 2 + 30 * k:30 + 30 * k], (x[k, 0] * 255).round().byte().numpy())
        assert np.abs(first[32:60, 2 + 30 * k:30 + 30 * k].astype(int) - expected[k, 0].numpy()).max() <= 1
    assert png(grids[1]).shape[1] == 2 + 3 * 30  # the last 3 images


def test_sample_is_the_seeded_prior_decoded(tmp_path):
    ckpt = save_untrained(tmp_path)
    out = run_predict(tmp_path, ckpt, "task=sample", "predict.num_samples=5", "seed=3")
    samples = np.load(out / "samples.npy")
    vae = vaelab.load(ckpt)
    expected = vae.decode(vae.sample_prior(5, torch.Generator().manual_seed(3))).detach().numpy()
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-6)
    pngs = sorted((out / "samples").glob("*.png"))
    assert len(pngs) == 5
    assert np.abs(png(pngs[4])[:, :, 0].astype(int) - np.round(expected[4, 0] * 255)).max() <= 1


def test_score_of_an_array_and_a_dataset_name(tmp_path):
    """scores.csv: one row per image of an .npz (names are indices); the IWAE NLL agrees with
    VAE.log_likelihood's own estimate; a dataset name scores its test split."""
    ckpt = save_untrained(tmp_path)
    images = RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x=images)
    out = run_predict(tmp_path, ckpt, f"input={tmp_path / 'mine.npz'}", "task=score", "predict.iw_samples=200")
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["0", "1", "2", "3"]
    vae = vaelab.load(ckpt)
    reference = -vae.log_likelihood(vae.transform(images), k=2000)
    np.testing.assert_allclose([float(r["nll_iw"]) for r in rows], reference.numpy(), atol=0.5)
    assert all(float(r["nelbo"]) > 0 for r in rows)
    out = run_predict(tmp_path / "dataset", ckpt, "input=mnist", "task=encode", "predict.batch_size=2000")
    latents = np.load(out / "latents.npz")
    assert latents["mean"].shape == (10000, 4) and latents["labels"][:3].tolist() == [7, 2, 1]


def test_bad_input_is_one_line(tmp_path, folder):
    ckpt = save_untrained(tmp_path)
    for overrides, error, message in (
        (["input=nowhere"], ConfigError, ("input=nowhere is neither a folder or file of images, a .npy/.npz file nor "
                                          "a dataset name")),
        (["task=encode"], ConfigError, "task=encode needs input="),
        ([f"input={folder}", "task=decode"], ConfigError, "task=decode is not one of encode, reconstruct, score, sample"),
        ([f"input={folder}", "predict.batch_size=0"], ConfigError, "predict.batch_size=0 is invalid"),
    ):
        with pytest.raises(error, match=message):
            run_predict(tmp_path, ckpt, *overrides)
    (folder / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="1 of 8 files in .* are not images"):
        run_predict(tmp_path, ckpt, f"input={folder}")
    conditional = save_untrained(tmp_path / "cond", ["model.conditional=true"])
    (folder / "notes.txt").unlink()
    with pytest.raises(ConfigError, match="this model is conditional .*give predict.label=<class>"):
        run_predict(tmp_path, conditional, f"input={folder}")
    out = run_predict(tmp_path / "labelled", conditional, f"input={folder}", "predict.label=3")
    assert np.load(out / "latents.npz")["mean"].shape == (7, 4)


@pytest.mark.slow
def test_the_command_line_writes_into_its_run_folder_and_refuses_bad_input(tmp_path, folder):
    ckpt = save_untrained(tmp_path)
    result = run_cli("vaelab.predict", [f"ckpt_path={ckpt}", f"input={folder}", "task=score", "trainer=cpu",
                                        "predict.iw_samples=10"], tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "outputs" / "predict" / "runs").iterdir()
    assert len((run / "scores.csv").read_text().splitlines()) == 1 + 7
    result = run_cli("vaelab.predict", [f"ckpt_path={ckpt}", "input=nowhere", "trainer=cpu"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("vaelab: error: input=nowhere is neither")


@pytest.mark.slow
def test_scores_of_a_trained_model_find_the_users_odd_images(tmp_path):
    """Trained on MNIST digits (an .npz), the model scores held-out digits (a PNG folder) far below
    noise and letters-like strokes; nll_iw is below nelbo for the digits (the IWAE bound is tighter)."""
    data = load_dataset("mnist", DATA_ROOT, [MIRROR], download=False)
    np.savez(tmp_path / "train.npz", images=data.train.images[:3000, 0].numpy(), labels=data.train.labels[:3000].numpy())
    cfg = compose_config(tmp_path, ["data=array", f"data.path={tmp_path / 'train.npz'}", "trainer.max_epochs=3",
                                    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                    "model.latent_dim=8", "callbacks.latent_embedding=null", "logger=none"])
    train(cfg)
    mine = tmp_path / "mine"
    (mine / "digits").mkdir(parents=True)
    (mine / "odd").mkdir()
    for i in range(20):
        Image.fromarray(data.test.images[i, 0].numpy()).save(mine / "digits" / f"{i:02d}.png")
        Image.fromarray(RNG.integers(0, 256, (28, 28), dtype=np.uint8)).save(mine / "odd" / f"noise{i:02d}.png")
    out = run_predict(tmp_path / "p", tmp_path / "run", f"input={mine}", "task=score", "predict.iw_samples=100")
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    digits = torch.tensor([float(r["nll_iw"]) for r in rows if r["name"].startswith("digits")])
    odd = torch.tensor([float(r["nll_iw"]) for r in rows if r["name"].startswith("odd")])
    assert len(digits) == len(odd) == 20
    assert auroc(digits, odd) == 1.0 and odd.min() > digits.max() + 100
    nelbo = torch.tensor([float(r["nelbo"]) for r in rows if r["name"].startswith("digits")])
    assert (nelbo - digits).mean() > 0.5 and math.isfinite(float(nelbo.mean()))
