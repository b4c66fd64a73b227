"""examples/python_api.py runs as a user would run it, and what it prints holds."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import MIRROR, REPO

import vaelab
from vaelab.data.sources import load_dataset


@pytest.mark.slow
def test_the_python_api_example_trains_saves_loads_and_uses_every_method(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), "--out", str(tmp_path / "ex"),
                             "--steps", "200"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "VAELAB_DATA_MIRROR": MIRROR}, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["latent_dim"] == 8 and summary["nelbo"] == pytest.approx(summary["recon"] + summary["kl"], rel=1e-5)
    assert summary["nelbo"] < 250  # an untrained model: about 28 x 28 x ln 2 = 543 nats
    assert summary["nll_iw"] < summary["nelbo"]  # the IWAE bound is the tighter one
    assert summary["decode_equals_reconstruct"] and max(summary["interpolation_ends"]) < 1e-5
    assert 0 <= summary["sample_range"][0] and summary["sample_range"][1] <= 1
    for name in ("reconstructions.png", "samples.png", "interpolation.png"):
        assert (tmp_path / "ex" / name).is_file()
    # the saved model, loaded here, encodes the first MNIST test digit as the example printed
    vae = vaelab.load(summary["checkpoint"])
    digit = load_dataset("mnist", tmp_path / "data", [MIRROR], download=False).test.images[:1, 0].numpy()
    torch.testing.assert_close(vae.encode(vae.transform(digit)).mean[0], torch.tensor(summary["first_latent_mean"]))
