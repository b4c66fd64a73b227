"""Resuming: the checkpoint is checked and its settings compared with the new ones before any data
is loaded; changed optimizer settings reach the restored optimizer."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import DATA_ROOT, compose_config

from vaelab.checkpoints import read as read_checkpoint
from vaelab.errors import ConfigError, VaelabError
from vaelab.resume import ABSENT, OptimizerOverrides, compare
from vaelab.train import train

FAST = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "logger=csv"]
SAVED = {
    "seed": 42, "ckpt_path": None,
    "trainer": {"max_epochs": 10, "accumulate_grad_batches": 1, "log_every_n_steps": 50},
    "data": {"root": "/data", "batch_size": 128, "seed": 42},
    "model": {"latent_dim": 20, "encoder": {"hidden": [400]}},
    "optimizer": {"_target_": "torch.optim.Adam", "lr": 1e-3, "weight_decay": 0.0},
    "callbacks": {"step_checkpoint": {"every_n_train_steps": 1000}},
    "paths": {"output_dir": "/runs/a"},
}


def changed(**paths) -> dict:
    """SAVED with dotted keys set (None: removed)."""
    import copy

    new = copy.deepcopy(SAVED)
    for dotted, value in paths.items():
        *parents, leaf = dotted.split("__")
        node = new
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return new


def test_compare_sorts_each_difference_by_what_a_resume_does_with_it():
    """Catches a comparison that lets model/data/seed changes through (the silent half-applied
    resume), or that refuses the limits, logging and locations a resumed run legitimately changes."""
    changes = compare(SAVED, changed(trainer__max_epochs=20, data__root="/elsewhere", paths__output_dir="/runs/b",
                                     callbacks__step_checkpoint__every_n_train_steps=10, ckpt_path="/runs/a/last.ckpt",
                                     optimizer__lr=1e-2, optimizer__amsgrad=True,
                                     model__latent_dim=10, data__batch_size=64, seed=7,
                                     trainer__accumulate_grad_batches=2, optimizer___target_="torch.optim.AdamW"))
    assert set(changes.free) == {"trainer.max_epochs", "data.root", "paths.output_dir", "ckpt_path",
                                 "callbacks.step_checkpoint.every_n_train_steps"}
    assert changes.optimizer == {"optimizer.lr": (1e-3, 1e-2), "optimizer.amsgrad": (ABSENT, True)}
    assert changes.refused == {"model.latent_dim": (20, 10), "data.batch_size": (128, 64), "seed": (42, 7),
                               "trainer.accumulate_grad_batches": (1, 2),
                               "optimizer._target_": ("torch.optim.Adam", "torch.optim.AdamW")}
    assert compare(SAVED, changed()) == compare(SAVED, SAVED) and not compare(SAVED, SAVED).refused
    removed = compare(SAVED, changed(model__encoder=None))
    assert removed.refused == {"model.encoder.hidden": ([400], ABSENT)}
    assert compare(SAVED, changed(optimizer__weight_decay=None)).refused == {"optimizer.weight_decay": (0.0, ABSENT)}


def test_optimizer_overrides_reach_the_restored_optimizer_and_scale_a_schedule_in_progress():
    """A new lr multiplies the current (scheduled) rate and the scheduler's base rate by new/old,
    so the cosine schedule continues from its position; other settings are set as given. Catches
    setting lr to the new base value mid-schedule, and forgetting the scheduler's base_lrs."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([param], lr=1e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    current = optimizer.param_groups[0]["lr"]
    trainer = SimpleNamespace(optimizers=[optimizer], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    overrides = OptimizerOverrides({"optimizer.lr": (1e-3, 1e-2), "optimizer.weight_decay": (0.0, 0.5)})
    overrides.on_train_start(trainer, None)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(current * 10) and group["initial_lr"] == pytest.approx(1e-2)
    assert scheduler.base_lrs == pytest.approx([1e-2]) and group["weight_decay"] == 0.5
    optimizer.step()
    scheduler.step()  # the schedule goes on from step 5 of 10 at ten times the rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))


def test_a_missing_truncated_or_foreign_checkpoint_is_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"config": {"seed": 1}}}, good)
    assert read_checkpoint(good)["hyper_parameters"]["config"] == {"seed": 1}
    truncated, foreign, other = tmp_path / "cut.ckpt", tmp_path / "notes.ckpt", tmp_path / "other.ckpt"
    truncated.write_bytes(good.read_bytes()[:300])
    foreign.write_text("hello")
    torch.save({"weights": torch.ones(2)}, other)
    cases = [(tmp_path / "nope.ckpt", f"checkpoint not found: ckpt_path={tmp_path / 'nope.ckpt'}; pass the path"),
             (truncated, f"ckpt_path={truncated} is not a checkpoint, or is truncated or corrupt (RuntimeError: "),
             (foreign, f"ckpt_path={foreign} is not a checkpoint, or is truncated or corrupt ("),
             (other, f"ckpt_path={other} is not a vaelab checkpoint")]
    for path, message in cases:
        with pytest.raises(VaelabError) as err:
            read_checkpoint(path)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.fixture
def no_data(monkeypatch):
    """Loading any dataset fails the test: what is checked must be checked before."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded")
    monkeypatch.setattr("vaelab.data.datamodule.load_dataset", refuse)


def test_a_bad_resume_stops_before_any_data_is_loaded(tmp_path, no_data):
    with pytest.raises(VaelabError, match="checkpoint not found: ckpt_path="):
        train(compose_config(tmp_path, [*FAST, f"ckpt_path={tmp_path / 'nope.ckpt'}"]))
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VaelabError, match="is not a checkpoint, or is truncated or corrupt"):
        train(compose_config(tmp_path, [*FAST, f"ckpt_path={tmp_path / 'cut.ckpt'}"]))


@pytest.mark.slow
def test_resume_applies_a_new_learning_rate_and_refuses_a_new_model(tmp_path, monkeypatch):
    """Before: ckpt_path=... optimizer.lr=X trained on with the checkpoint's rate while
    .hydra/config.yaml recorded X, and model.latent_dim=10 ended in a size-mismatch traceback."""
    train(compose_config(tmp_path / "a", [*FAST, "trainer.max_epochs=1"]))
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-3
    train(compose_config(tmp_path / "b", [*FAST, f"ckpt_path={last}", "optimizer.lr=0.01", "trainer.max_epochs=2"]))
    resumed = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == 10 and resumed["optimizer_states"][0]["param_groups"][0]["lr"] == 0.01

    monkeypatch.setattr("vaelab.data.datamodule.load_dataset", lambda *a, **k: pytest.fail("data was loaded"))
    with pytest.raises(ConfigError, match=rf"^ckpt_path={last} was trained with other settings, which a resume cannot "
                                          r"change: .*model.latent_dim \(20 -> 10\).*objective.beta \(1.0 -> 4\)"):
        train(compose_config(tmp_path / "c", [*FAST, f"ckpt_path={last}", "model.latent_dim=10", "objective.beta=4"]))
