"""Experiment trackers (MLflow, Weights & Biases, several at once) read back with their own tools,
and the optional plugins: extras of the package, one line naming the pip command when missing."""

import json
import struct
import subprocess
import sys

import pytest
import tomllib
from conftest import REPO, compose_config, read_metrics

from vaelab import plugins
from vaelab.train import train

RUN = ["debug=limit_batches", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
       "callbacks.latent_embedding=null", "callbacks.latent_images=null"]


def mlflow_run(tracking_uri: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("vaelab").experiment_id])
    return run


@pytest.mark.slow
def test_mlflow_and_tensorboard_at_once_get_the_config_and_final_metrics(tmp_path):
    """logger=many: a TensorBoard log and an MLflow run in outputs/mlflow.db, read back with MLflow's
    client: the flattened config as parameters, metrics.json's values as final/<name>."""
    cfg = compose_config(tmp_path, ["logger=many", "model.latent_dim=7", *RUN])
    train(cfg)
    metrics = read_metrics(tmp_path / "run")
    assert any((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    run = mlflow_run(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    assert run.info.status == "FINISHED" and run.info.run_name == str(tmp_path / "run")
    assert run.data.params["model/latent_dim"] == "7" and run.data.params["objective/beta"] == "1.0"
    assert run.data.params["data/name"] == "mnist"
    for name in ("test/nelbo", "test/kl", "val/nelbo", "train/loss"):
        assert run.data.metrics[f"final/{name}"] == pytest.approx(metrics[name], rel=1e-6)
        assert run.data.metrics[name] == pytest.approx(metrics[name], rel=1e-6)  # Lightning's own logging
    assert run.data.metrics["final/global_step"] == metrics["global_step"]


@pytest.mark.slow
def test_mlflow_logs_to_the_tracking_uri_given(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/server.db")
    assert compose_config(tmp_path, ["logger=mlflow"]).logger.mlflow.tracking_uri == f"sqlite:///{tmp_path}/server.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    cfg = compose_config(tmp_path, ["logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/given.db", *RUN])
    train(cfg)
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    run = mlflow_run(f"sqlite:///{tmp_path}/given.db")
    assert run.data.metrics["final/test/nelbo"] == pytest.approx(read_metrics(tmp_path / "run")["test/nelbo"], rel=1e-6)


def wandb_records(path):
    """The records of a W&B offline run file (``run-<id>.wandb``): W&B's LevelDB-style log of
    ``wandb_internal_pb2.Record`` protobufs in 32 KiB blocks (a 7-byte file header, then records of
    a 7-byte header each: CRC-32C, length, type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, part = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


@pytest.mark.slow
def test_wandb_runs_offline_into_the_run_folder_with_config_and_final_metrics(tmp_path):
    cfg = compose_config(tmp_path, ["logger=wandb", "model.latent_dim=6", *RUN])
    train(cfg)
    metrics = read_metrics(tmp_path / "run")
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds  # the run was finished, so a next sweep job gets its own
    config = {u.key or "/".join(u.nested_key): json.loads(u.value_json)
              for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert config["model/latent_dim"] == 6 and config["data/name"] == "mnist"
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    assert history["final/test/nelbo"] == pytest.approx(metrics["test/nelbo"], rel=1e-6)
    assert history["final/val/nelbo"] == pytest.approx(metrics["val/nelbo"], rel=1e-6)


# --- optional plugins -----------------------------------------------------------------------------
def test_plugin_choices_are_read_from_every_override_form():
    args = ["-m", "logger=[tensorboard,mlflow]", "+logger=wandb", "hydra/launcher=joblib", "hparams_search=optuna",
            "objective.beta=1,2", "~logger", "--cfg", "job", "logger=csv,many"]
    assert plugins.choices(args) == [("logger", "tensorboard"), ("logger", "mlflow"), ("logger", "wandb"),
                                     ("hydra/launcher", "joblib"), ("hparams_search", "optuna"),
                                     ("objective.beta", "1"), ("objective.beta", "2"), ("logger", "csv"),
                                     ("logger", "many")]


def test_a_missing_plugin_is_one_sentence_with_its_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)
    assert plugins.missing(["logger=many", "hydra/launcher=submitit_slurm", "logger=tensorboard"]) == [
        "logger=many needs mlflow, which is not installed: pip install 'vaelab[mlflow]'",
        ("hydra/launcher=submitit_slurm needs hydra_plugins.hydra_submitit_launcher, which is not installed: "
         "pip install 'vaelab[slurm]'")]
    assert plugins.missing(["logger=wandb", "hparams_search=optuna"]) == []  # installed here


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "module", "args", "choice", "pip"), [
    ("vaelab.train", "hydra_plugins.hydra_optuna_sweeper", ["hparams_search=optuna"], "hparams_search=optuna",
     "pip install 'vaelab[optuna]'"),
    ("vaelab.train", "wandb", ["-m", "logger=csv,wandb"], "logger=wandb", "pip install 'vaelab[wandb]'"),
    ("vaelab.eval", "hydra_plugins.hydra_joblib_launcher", ["ckpt_path=x", "-m", "hydra/launcher=joblib"],
     "hydra/launcher=joblib", "pip install hydra-joblib-launcher"),
])
def test_an_entry_point_refuses_a_missing_plugin_before_hydra_composes(tmp_path, entry, module, args, choice, pip):
    """The plugin's module is made unimportable in a fresh interpreter (None in sys.modules); without
    the check Hydra would report "Could not find 'hydra/sweeper/optuna'" with the search path."""
    code = (f"import sys; sys.modules[{module!r}] = None; sys.argv = ['{entry}', *{args!r}]; "
            f"from {entry} import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"vaelab: error: {choice} needs {module}, which is not installed: {pip}"]
    assert not (tmp_path / "outputs").exists()


def test_the_base_install_leaves_the_plugins_to_extras_that_make_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for package in ("hydra-optuna-sweeper", "hydra-submitit-launcher", "mlflow", "wandb", "optuna"):
        assert package not in base
    extras = project["optional-dependencies"]
    assert extras["optuna"] == ["hydra-optuna-sweeper>=1.2"] and extras["slurm"] == ["hydra-submitit-launcher>=1.2"]
    assert extras["mlflow"][0].startswith("mlflow") and extras["wandb"][0].startswith("wandb")
    makefile = (REPO / "Makefile").read_text()
    assert "EXTRAS := dev,optuna,slurm,mlflow,wandb" in makefile and 'install -e ".[$(EXTRAS)]"' in makefile
    assert project["scripts"]["vaelab-predict"] == "vaelab.predict:main"
