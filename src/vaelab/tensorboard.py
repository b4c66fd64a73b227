"""vaelab's TensorBoard output: Lightning's logger without its ``epoch`` scalar and with each
metric's description, and the summaries the callbacks write: captioned images and figures, the
HPARAMS tab's experiment and session, the CUSTOM SCALARS layout.

Scalars, images and figures go out as tensor summaries carrying their plugin's metadata: only in
this form does TensorBoard's fast (Rust) data server, its default, keep a description (it drops the
description of the legacy simple-value and encoded-image forms). TensorBoard shows a description
behind the (i) icon of a card in the SCALARS and IMAGES tabs. To read the event files in Python use
``tensorboard.backend.event_processing.plugin_event_accumulator.EventAccumulator`` and its
``Tensors``: the older ``event_accumulator`` sees only the legacy forms.
"""

from __future__ import annotations

import io
import time
from collections.abc import Collection, Mapping

import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from vaelab.metric_info import RunFacts, describe

LAYOUT_CATEGORY = "vaelab: the curves to look at first"


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, with two changes:

    - the ``epoch`` scalar that Lightning adds to every log is dropped (the step axis orders the
      points, and its chart opened the SCALARS tab);
    - each scalar's first point carries its description from ``vaelab.metric_info`` (the words of
      the console table and of ``metrics.json``'s ``about``), with the run's facts learnt from the
      module Lightning hands the logger at the start of each fit and test.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.facts = RunFacts()
        self._described: set[str] = set()

    def log_graph(self, model, input_array=None) -> None:
        if hasattr(model, "vae"):  # a VAEModule
            self.facts = RunFacts.of(model)
        super().log_graph(model, input_array)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        writer = self.experiment
        for name, value in metrics.items():
            if name == "epoch":
                continue
            description = describe(name, self.facts) if name not in self._described else ""
            self._described.add(name)
            add_scalar(writer, name, float(value), step, description)


def _write(writer, value: summary_pb2.Summary.Value, step: int | None = None) -> None:
    # (the writer's own file writer, which it reopens after a close, as its add_* methods do)
    writer._get_file_writer().add_summary(summary_pb2.Summary(value=[value]), step)


def add_scalar(writer, tag: str, value: float, step: int | None, description: str = "") -> None:
    metadata = scalar_metadata.create_summary_metadata(display_name="", description=description)
    _write(writer, summary_pb2.Summary.Value(tag=tag, metadata=metadata,
                                             tensor=tensor_util.make_tensor_proto(np.float32(value))), step)


def add_image(writer, tag: str, image: np.ndarray, step: int, description: str) -> None:
    """An RGB image (uint8 [H, W, 3]) with its description."""
    from PIL import Image

    png = io.BytesIO()
    # zlib level 1: 35-45% less time than PIL's default 6 for 10-15% larger pictures, drawn every epoch
    Image.fromarray(image).save(png, format="PNG", compress_level=1)
    height, width = image.shape[:2]
    metadata = image_metadata.create_summary_metadata(display_name=tag, description=description)
    tensor = tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png.getvalue()])
    _write(writer, summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor), step)


def figure_pixels(figure, dpi: int = 100) -> np.ndarray:
    """A matplotlib figure as RGB pixels [H, W, 3] (the figure is closed)."""
    import matplotlib.pyplot as plt

    figure.set_dpi(dpi)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels


def add_figure(writer, tag: str, figure, step: int, description: str) -> None:
    """A matplotlib figure, as an image with its description (the figure is closed)."""
    add_image(writer, tag, figure_pixels(figure), step, description)


def add_picture(writer, tag: str, picture, step: int, description: str) -> None:
    """A grid tensor [C, H, W] in [0, 1] (grey or RGB) or a matplotlib figure, with its description."""
    if hasattr(picture, "savefig"):
        add_figure(writer, tag, picture, step, description)
        return
    pixels = (picture.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    add_image(writer, tag, pixels.expand(-1, -1, 3).numpy() if pixels.shape[-1] == 1 else pixels.numpy(), step,
              description)


def _hparam_value(value) -> tuple[dict, int]:
    """(protobuf Value fields, DataType) of a column value: booleans as booleans, integers as their
    decimal text (TensorBoard's hparams have no integer type and print every number with five
    significant digits, 20 as 20.000), other numbers as numbers, anything else as text."""
    if isinstance(value, bool):
        return {"bool_value": value}, api_pb2.DATA_TYPE_BOOL
    if isinstance(value, int):
        return {"string_value": str(value)}, api_pb2.DATA_TYPE_STRING
    if isinstance(value, float):
        return {"number_value": value}, api_pb2.DATA_TYPE_FLOAT64
    return {"string_value": str(value)}, api_pb2.DATA_TYPE_STRING


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, metadata=hparams_metadata.create_summary_metadata(data),
                                     tensor=hparams_metadata.NULL_TENSOR)


def add_hparams(writer, columns: Mapping[str, object], varied: Collection[str], metrics: Mapping[str, str],
                trial: str) -> None:
    """The HPARAMS tab's record of one run (a session): its ``columns`` {name: value}, the
    ``metrics`` {scalar tag: description} it is judged by (their values are the last points of those
    scalar tags), ``trial`` the name of its row. TensorBoard ticks five columns by default, those
    flagged ``differs`` first (here the ``varied`` ones: the run's overrides), then by name, and
    the first five metrics in the given order. It reads the experiment (columns and metrics) of
    one run of the folder it shows, so runs shown together should log the same columns."""
    infos, start = [], plugin_data_pb2.SessionStartInfo(group_name=trial, start_time_secs=time.time())
    for name, value in columns.items():
        fields, data_type = _hparam_value(value)
        for field, content in fields.items():
            setattr(start.hparams[name], field, content)
        infos.append(api_pb2.HParamInfo(name=name, type=data_type, differs=name in varied))
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag, description=text,
                                       dataset_type=api_pb2.DATASET_VALIDATION if tag.startswith("val/") else None)
                    for tag, text in metrics.items()]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time())
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    for tag, data in ((hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
                      (hparams_metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
                      (hparams_metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))):
        data.version = hparams_metadata.PLUGIN_DATA_VERSION
        _write(writer, _hparams_summary(tag, data))


def add_layout(writer, charts: Mapping[str, Collection[str]]) -> None:
    """The CUSTOM SCALARS tab: one chart per title, each drawing every scalar tag that matches one
    of its regular expressions. TensorBoard merges the layouts of all runs shown (charts of the same
    category and title appear once)."""
    layout = layout_pb2.Layout(category=[layout_pb2.Category(title=LAYOUT_CATEGORY, chart=[
        layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tags)))
        for title, tags in charts.items()])])
    value = summary_pb2.Summary.Value(tag=layout_metadata.CONFIG_SUMMARY_TAG,
                                      metadata=layout_metadata.create_summary_metadata(),
                                      tensor=tensor_util.make_tensor_proto(layout.SerializeToString()))
    _write(writer, value)
