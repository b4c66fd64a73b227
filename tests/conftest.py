"""Shared test helpers: configs composed with Hydra's compose API, and the CLI run as a subprocess.

Real data is read through the offline mirror: $VAELAB_DATA_MIRROR, else ../shared/data beside
the checkout. Prepared data (the decoded CIFAR-10 cache) goes to the project's own data/ folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
MIRROR = os.environ.get("VAELAB_DATA_MIRROR") or str(REPO.parent / "shared" / "data")
DATA_ROOT = REPO / "data"
DATA_OVERRIDES = [f"data.mirror={MIRROR}", f"data.root={DATA_ROOT}"]
# PYTHONPATH for CLI runs that load test-only callbacks: the tests, and this checkout's vaelab
TEST_PATH = os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])


def compose_config(tmp_path: Path, overrides=(), config_name: str = "train") -> DictConfig:
    """Compose a config as the CLI would, with its run folder at tmp_path/run."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vaelab.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=[*DATA_OVERRIDES, *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.paths.root_dir = str(tmp_path)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_cli(module: str, args, root: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` with outputs under root/outputs."""
    full_env = {**os.environ, "VAELAB_ROOT": str(root), "VAELAB_DATA_MIRROR": MIRROR, **env}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_folders(root: Path, task: str = "train") -> list[Path]:
    return sorted((root / "outputs" / task / "runs").iterdir())


def read_metrics(run_folder: Path) -> dict:
    return json.loads((run_folder / "metrics.json").read_text())


def tensorboard_events(folder: Path):
    """The summaries of a TensorBoard folder as TensorBoard reads them (scalars, images, hparams and
    layouts all as tensors by plugin: ``PluginTagToContent(plugin)``, ``Tensors(tag)``, ``SummaryMetadata(tag)``)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return events


@pytest.fixture
def mnist_cfg(tmp_path):
    """The default training config, cut to a few CPU batches."""
    return compose_config(tmp_path, ["debug=limit_batches", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"])
