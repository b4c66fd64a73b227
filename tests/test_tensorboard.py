"""What a user sees in TensorBoard, checked in the event files as TensorBoard reads them: which
tags exist, at which steps, with which descriptions; the HPARAMS tab's columns, types and metrics;
the CUSTOM SCALARS layout; labelled pictures; and a console without the libraries' noise."""

import io
import logging
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import DATA_ROOT, read_metrics, run_cli, run_folders, tensorboard_events
from PIL import Image
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from vaelab.entry import quiet_library_noise
from vaelab.labelled_grid import labelled_grid
from vaelab.nets.conv import ConvDecoder
from vaelab.nets.mlp import MLPDecoder
from vaelab.nets.resnet import ResNetDecoder
from vaelab.summarize import Job, write_tables
from vaelab.tensorboard import add_hparams

CPU = ["debug=limit_batches", f"data.root={DATA_ROOT}", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
# a conditional model with a KL warm-up over 4 steps, beta 0.5, schedule values logged every 2 steps;
# 5 training batches per epoch, 2 epochs
RUN = [*CPU, "model.conditional=true", "kl_schedule=linear_warmup", "kl_schedule.warmup_steps=4", "objective.beta=0.5",
       "trainer.log_every_n_steps=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    result = run_cli("vaelab.train", RUN, root)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = run_folders(root)
    return folder, result, tensorboard_events(folder / "tensorboard")


def steps(events, tag):
    return [e.step for e in events.Tensors(tag)]


def values(events, tag):
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}


def png(events, tag):
    """The last picture of an image tag, as RGB pixels [H, W, 3]."""
    width, height, data = events.Tensors(tag)[-1].tensor_proto.string_val
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert pixels.shape[:2] == (int(height), int(width))
    return pixels


def hparams_record(events):
    content = events.PluginTagToContent("hparams")
    return (hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG]),
            hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG]))


@pytest.mark.slow
def test_pictures_and_the_projector_line_up_with_the_epoch_scalars(run):
    """Catches: pictures logged at trainer.global_step (one step after Lightning's epoch-end
    scalars, 5 and 10 instead of 4 and 9) or at the epoch index, and the projector one step ahead."""
    folder, _, events = run
    epoch_ends = steps(events, "val/nelbo")
    assert epoch_ends == [4, 9]  # 5 batches per epoch; Lightning counts steps from 0
    assert steps(events, "train/nelbo") == steps(events, "train/loss") == epoch_ends
    pictures = {"images/reconstructions", "images/prior_samples", "images/interpolations", "images/traversals",
                "latent/scatter", "latent/kl_per_dim"}
    assert set(events.PluginTagToContent("images")) == pictures
    for tag in pictures:
        assert steps(events, tag) == epoch_ends, tag
    projector = (folder / "tensorboard" / "projector_config.pbtxt").read_text()
    assert re.findall(r'tensor_name: "latent/test:(\d+)"', projector) == [f"{epoch_ends[-1]:05d}"]


@pytest.mark.slow
def test_scalars_carry_the_metric_descriptions_and_no_clutter(run):
    """Catches: Lightning's epoch chart, final metrics repeated as single-point hp/... charts, a
    description that differs from metrics.json's (one text per metric, vaelab.metric_info), and
    train/nelbo (charted against val/nelbo) being the minimized loss (beta = 0.5 here, KL warm-up)."""
    folder, _, events = run
    scalars = set(events.PluginTagToContent("scalars"))
    assert "epoch" not in scalars and not any(tag.startswith("hp/") for tag in scalars)
    about = read_metrics(folder)["about"]
    described = [tag for tag in scalars if tag.startswith(("train/", "val/", "test/"))]
    assert len(described) >= 14
    for tag in described:
        text = events.SummaryMetadata(tag).summary_description
        assert text and text == about.get(tag, text), tag
    assert events.SummaryMetadata("val/nelbo").summary_description == about["val/nelbo"]
    metrics = read_metrics(folder)  # train/nelbo is the ELBO's, not the beta-weighted, warmed-up loss
    assert metrics["train/nelbo"] == pytest.approx(metrics["train/recon"] + metrics["train/kl"], rel=1e-6)
    assert abs(metrics["train/nelbo"] - metrics["train/loss"]) > 1


@pytest.mark.slow
def test_the_about_table_shows_each_description_whole(run):
    """Catches: the pipes of KL(q(z|x) || p(z)) ending the Markdown table's cell (the TEXT tab
    showed "nats/image; KL(q(z" for test/kl)."""
    from tensorboard.plugin_util import markdown_to_safe_html

    folder, _, events = run
    table = events.Tensors("about/metrics/text_summary")[-1].tensor_proto.string_val[0].decode()
    cells = re.findall(r"<td>(.*?)</td>", markdown_to_safe_html(table), re.DOTALL)
    about = read_metrics(folder)["about"]
    assert dict(zip(cells[0::2], cells[1::2], strict=True))["<code>test/kl</code>"] == about["test/kl"]


@pytest.mark.slow
def test_every_picture_has_a_description_and_the_class_rows_are_named(run):
    """Catches: pictures without a caption, and a conditional grid without its class names (the
    labels' margin left of the 10 rows of 8 samples, each 28 + 2 pixels, enlarged twice)."""
    _, _, events = run
    for tag in events.PluginTagToContent("images"):
        assert len(events.SummaryMetadata(tag).summary_description) > 40, tag
    assert "One row per class y" in events.SummaryMetadata("images/prior_samples").summary_description
    grid = png(events, "images/prior_samples")
    height, samples = 2 * (2 + 10 * 30), 2 * (2 + 8 * 30)
    assert grid.shape[0] == height and grid.shape[1] > samples
    margin = grid[:, : grid.shape[1] - samples].min(axis=2)
    rows = [margin[2 * (2 + 30 * r): 2 * (2 + 30 * r + 28)] for r in range(10)]
    assert all((row < 128).any() for row in rows)  # a name written beside every row


@pytest.mark.slow
def test_hparams_show_the_curated_columns_with_their_types_and_the_registered_metrics(run):
    """Catches: the flattened config as columns (~100, with callbacks/.../_target_ and paths), a
    file location among them (data.root was overridden), integers and booleans as floats, metrics
    written as hp/ copies instead of registered from the run's own val/ and test/ tags, the
    overrides not ticked first, and a row name that starts with the shared folder path."""
    folder, _, events = run
    experiment, start = hparams_record(events)
    overrides = {"debug", "trainer.enable_progress_bar", "trainer.accelerator", "model.conditional", "kl_schedule",
                 "kl_schedule.warmup_steps", "objective.beta", "trainer.log_every_n_steps"}
    curated = {"model", "model.latent_dim", "likelihood", "objective", "objective.beta", "prior", "posterior", "data",
               "optimizer.lr", "data.batch_size", "trainer.max_epochs"}
    infos = {info.name: info for info in experiment.hparam_infos}
    assert set(infos) == overrides | curated
    assert {name for name, info in infos.items() if info.differs} == overrides
    types = {name: api_pb2.DataType.Name(info.type) for name, info in infos.items()}
    assert (types["model.conditional"], start.hparams["model.conditional"].bool_value) == ("DATA_TYPE_BOOL", True)
    assert (types["model.latent_dim"], start.hparams["model.latent_dim"].string_value) == ("DATA_TYPE_STRING", "20")
    assert (types["objective.beta"], start.hparams["objective.beta"].number_value) == ("DATA_TYPE_FLOAT64", 0.5)
    assert start.hparams["model"].string_value == "mlp" and start.hparams["kl_schedule"].string_value == "linear_warmup"

    about = read_metrics(folder)["about"]
    metrics = [info.name.tag for info in experiment.metric_infos]
    scalars = set(events.PluginTagToContent("scalars"))
    assert set(metrics) == {tag for tag in scalars if tag.startswith(("val/", "test/"))}
    assert metrics[:2] == ["test/nelbo", "val/nelbo"]
    assert all(info.description == about[info.name.tag] for info in experiment.metric_infos)
    assert start.group_name.startswith("debug=limit_batches enable_progress_bar=false accelerator=cpu conditional=true")
    assert start.group_name.endswith(f" · {folder.name}")


@pytest.mark.slow
def test_custom_scalars_chart_what_the_run_logged_and_the_kl_weight_follows_the_warmup(run):
    """Catches: a chart whose patterns match no scalar of the run (an empty card), the KL weight
    logged one step off its step (w(t) = min(1, t / 4) checked at each logged step), and schedule
    values logged at other steps than the module's per-step values."""
    _, _, events = run
    (layout_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(layout_event.tensor_proto).item())
    (category,) = layout.category
    scalars = set(events.PluginTagToContent("scalars"))
    titles = [chart.title for chart in category.chart]
    assert titles == ["negative ELBO (nats/image): train vs val", "reconstruction and KL (nats/image)",
                      "beta and the KL weight w(t)", "learning rate"]
    for chart in category.chart:
        for pattern in chart.multiline.tag:
            assert any(re.search(pattern, tag) for tag in scalars), pattern
    weight = values(events, "schedule/kl_weight")
    assert sorted(weight) == [0, 1, 3, 5, 7, 9]  # the first batch, then where (step + 1) % 2 == 0
    assert weight == pytest.approx({t: min(1.0, t / 4) for t in weight})
    assert set(values(events, "schedule/beta").values()) == {0.5}
    assert list(values(events, "schedule/lr").values()) == pytest.approx([1e-3] * len(weight))
    assert steps(events, "train/loss_step") == sorted(weight)[1:]


@pytest.mark.slow
def test_the_console_shows_the_metrics_and_the_run_folder_without_library_noise(run):
    folder, result, _ = run
    output = result.stdout + result.stderr
    for noise in ("Total FLOPs", "Total params", "LeafSpec", "LitLogger"):
        assert noise not in output
    assert re.search(r"test/nelbo = \d+\.\d{4}  \(nats/image\)", result.stdout)
    assert f"run folder: {folder} (tensorboard --logdir {folder})" in result.stdout
    assert "parameters) on mnist" in output


@pytest.mark.slow
def test_a_sweep_ticks_what_it_varies_and_names_its_rows_by_it(tmp_path):
    """Catches: every override flagged as varying (debug, data.root, ... would fill the five ticked
    columns), rows named by their shared folder path, which TensorBoard cuts before the job, and a
    swept column of two types (beta=4, typed as an integer, is the number 4.0 beside 0.5)."""
    result = run_cli("vaelab.train", ["-m", "objective.beta=0.5,4", *CPU, "trainer.max_epochs=1",
                                      "callbacks.latent_embedding=null"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multirun").iterdir()
    for job, beta in (("0", "0.5"), ("1", "4")):
        experiment, start = hparams_record(tensorboard_events(sweep / job / "tensorboard"))
        assert [info.name for info in experiment.hparam_infos if info.differs] == ["objective.beta"]
        (beta_info,) = [info for info in experiment.hparam_infos if info.name == "objective.beta"]
        assert beta_info.type == api_pb2.DATA_TYPE_FLOAT64 and start.hparams["objective.beta"].number_value == float(beta)
        assert start.hparams["model.latent_dim"].string_value == "20"
        assert start.group_name == f"beta={beta} · {sweep.name}/{job}"


def test_hparams_types_and_order_as_tensorboard_reads_them(tmp_path):
    """Catches: booleans and integers written as numbers (TensorBoard shows 1.0000 and 20.000),
    and the metric order lost (TensorBoard ticks the first five)."""
    with SummaryWriter(str(tmp_path)) as writer:
        add_hparams(writer, {"flag": True, "dims": 20, "lr": 1e-3, "model": "mlp"}, ["dims"],
                    {"test/nelbo": "nats", "val/nelbo": "nats", "test/kl": "nats"}, "dims=20 · run")
    experiment, start = hparams_record(tensorboard_events(tmp_path))
    types = {info.name: api_pb2.DataType.Name(info.type) for info in experiment.hparam_infos}
    assert types == {"flag": "DATA_TYPE_BOOL", "dims": "DATA_TYPE_STRING", "lr": "DATA_TYPE_FLOAT64",
                     "model": "DATA_TYPE_STRING"}
    assert start.hparams["flag"].bool_value is True and start.hparams["dims"].string_value == "20"
    assert [info.name.tag for info in experiment.metric_infos] == ["test/nelbo", "val/nelbo", "test/kl"]
    assert [info.name for info in experiment.hparam_infos if info.differs] == ["dims"]
    assert start.group_name == "dims=20 · run"


def test_labelled_grid_keeps_the_pixels_and_writes_each_label_beside_its_row():
    """Four 4x4 images of distinct grey levels in rows of 2, enlarged 3 times. Catches: images
    resampled (blurred) instead of enlarged by repetition, shifted by the margin, and labels
    written beside the wrong row (row 1 has none)."""
    images = torch.tensor([0.0, 0.25, 0.75, 1.0])[:, None, None, None].expand(4, 1, 4, 4)
    picture = labelled_grid(images, 2, row_labels=["first row", ""], scale=3, padding=2)
    cell = 3 * (4 + 2)
    assert picture.shape[0] == 2 * cell + 6
    left = picture.shape[1] - (2 * cell + 6)
    assert left > 0
    for index, level in enumerate((0, 64, 191, 255)):
        r, c = divmod(index, 2)
        y, x = 6 + r * cell, left + 6 + c * cell
        assert (picture[y: y + 12, x: x + 12] == level).all()
        assert (picture[y - 6: y, x: x + 12] == 128).all()  # the grey padding between images
    ink = picture[:, :left].min(axis=2) < 128
    assert ink[6: 6 + 12].any() and not ink[6 + cell: 6 + cell + 12].any()


@pytest.mark.parametrize("decoder", [
    lambda every: MLPDecoder((1, 28, 28), 3, 1, hidden=[16, 16], cond_dim=10, condition_every_layer=every),
    lambda every: ConvDecoder((1, 28, 28), 3, 1, channels=[4, 8], hidden=16, cond_dim=10, condition_every_layer=every),
    lambda every: ResNetDecoder((1, 28, 28), 3, 1, channels=[4, 8], blocks=1, cond_dim=10, condition_every_layer=every),
])
def test_condition_every_layer_gives_the_label_to_the_layers_after_the_first(decoder):
    """With the first layer's label weights zeroed, the output still depends on the label only
    where the later layers see it. Catches: the option conditioning the input alone; and the
    default's parameters changed (older conditional checkpoints would no longer load)."""
    torch.manual_seed(0)
    z, y = torch.randn(2, 3), torch.eye(10)[[1, 7]]
    for every in (False, True):
        net = decoder(every)
        with torch.no_grad():
            net.net[0].weight[:, 3:] = 0  # the first layer's columns for the label
            gap = (net(z, y[[0, 0]]) - net(z, y)).abs().max().item()
        assert (gap > 1e-4) == every
    plain, every = decoder(False), decoder(True)
    assert plain.net[0].weight.shape[1] == 3 + 10
    assert sum(p.numel() for p in every.parameters()) > sum(p.numel() for p in plain.parameters())


def test_only_the_known_library_noise_is_silenced(caplog):
    """Catches: a blanket warnings filter (another FutureWarning or UserWarning, or the same text
    from elsewhere, must still show) and the LitLogger tip getting through."""
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."
    advice = ("Using ModelCheckpoint with manual optimization and every_n_train_steps, but no pre-optimization "
              "state was saved.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_library_noise()
        for module, text, category in (("lightning.pytorch.utilities._pytree", message, FutureWarning),
                                       ("vaelab.somewhere", message, FutureWarning),
                                       ("lightning.pytorch.utilities._pytree", "another deprecation", FutureWarning),
                                       ("lightning.pytorch.callbacks.model_checkpoint", advice, UserWarning),
                                       ("lightning.pytorch.callbacks.model_checkpoint", "other advice", UserWarning)):
            warnings.warn_explicit(text, category, "x.py", 1, module=module, registry={})
    assert [(str(w.message)) for w in caught] == [message, "another deprecation", "other advice"]
    with caplog.at_level(logging.INFO):
        rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_the_sweep_summary_shows_what_varies_and_the_shared_settings_once(tmp_path):
    """Catches: overrides that are the same in every job repeated as columns (the summary was 21
    columns wide), and metrics without their units."""
    shared = {"debug": "limit_batches", "data.root": "/data"}
    jobs = [Job(str(i), tmp_path, "done", {**shared, "objective.beta": beta}, {"test/nelbo": 100.0 + i, "test/mi": 1.0})
            for i, beta in enumerate(("1", "4"))]
    _, md = write_tables(tmp_path, jobs, "test/nelbo", descending=False)
    text = md.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| job"))
    assert header == "| job | objective.beta | test/nelbo | test/mi |"
    assert "Every job: `debug=limit_batches` `data.root=/data`" in text
    assert "Units: nats/image: test/nelbo; nats: test/mi" in text
