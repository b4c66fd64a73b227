"""Summarize a sweep: ``python -m vaelab.summarize <sweep folder> [--metric test/nelbo]``
(console script ``vaelab-summarize``).

Reads every job folder of a Hydra multirun (``<sweep>/<job>/.hydra/overrides.yaml``,
``metrics.json``, ``failed.json``) and writes into the sweep folder:

- ``summary.csv``: one row per job: its status (done, failed, running), its overrides, its
  final scalar metrics (every number in ``metrics.json`` whose name has a ``/``: ``test/nelbo``,
  ``samples/prior/fd_domain``, ``repr/linear_acc``, ...), for sweeps of ``vaelab.train`` and of
  ``vaelab.eval`` alike;
- ``summary.md``: the settings every job shares on one line, then a table of what varies (the
  swept settings and the metrics), done jobs sorted by ``--metric``, then the failed and
  unfinished jobs with their errors;
- ``plots/rate_distortion.png``: KL against reconstruction (test, else val) for each done job,
  labelled by its swept settings; ``plots/<metric>_vs_<x>.png`` for each metric of ``--plot``
  (default: ``--metric``) against each ``x`` of ``--against`` (default: the swept parameters),
  where ``x`` is a config path read from each job's saved config (``objective.beta``, also when
  an experiment or a group such as ``disent_model=`` set it rather than an override) or a metric
  (``test/recon``); each with a title and units; the same figures in ``<sweep>/tensorboard``.

The disentanglement study, each metric against beta and against reconstruction::

    vaelab-summarize <sweep> --metric disent/mig --descending \\
        --plot disent/mig disent/dci_disentanglement disent/sap disent/factor_vae disent/beta_vae \\
        --against objective.beta test/recon
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vaelab.entry import FAILURE_FILE
from vaelab.files import atomic_file
from vaelab.metric_info import describe


@dataclass
class Job:
    name: str
    folder: Path
    status: str  # done | failed | running
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    config: DictConfig = field(default_factory=OmegaConf.create)  # its saved .hydra/config.yaml


def _job_number(folder: Path):
    return (0, int(folder.name)) if folder.name.isdigit() else (1, folder.name)


def read_jobs(sweep: Path) -> list[Job]:
    """Every job folder (one holding ``.hydra/``) directly under ``sweep``."""
    jobs = []
    for folder in sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=_job_number):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        pairs = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
        overrides = dict(str(p).split("=", 1) for p in pairs if "=" in str(p))
        config = OmegaConf.load(folder / ".hydra" / "config.yaml") if (folder / ".hydra" / "config.yaml").is_file() \
            else OmegaConf.create()
        metrics_file = folder / "metrics.json"
        raw = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        metrics = {k: v for k, v in raw.items() if "/" in k and isinstance(v, (int, float))}
        # a training job is done once tested (train.yaml's test=true); an eval job (no such key) when it wrote metrics.json
        wants_test = OmegaConf.select(config, "test", default=False)
        if (folder / FAILURE_FILE).is_file():
            status, error = "failed", json.loads((folder / FAILURE_FILE).read_text()).get("error", "")
        elif raw and (not wants_test or any(k.startswith("test/") for k in metrics)):
            status, error = "done", ""
        else:
            status, error = "running", "no final metrics yet (still running, or killed)"
        jobs.append(Job(folder.name, folder, status, overrides, metrics, error, config))
    return jobs


def swept_parameters(jobs: list[Job]) -> list[str]:
    """The overrides whose value is not the same in every job."""
    keys = sorted({k for job in jobs for k in job.overrides})
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def shared_settings(jobs: list[Job]) -> dict[str, str]:
    """The overrides every job has, with the same value."""
    swept = set(swept_parameters(jobs))
    return {k: v for k, v in jobs[0].overrides.items() if k not in swept} if jobs else {}


def unit(metric: str) -> str:
    """The unit of a metric (``vaelab.metric_info``), "" where it has none or is unknown."""
    text = describe(metric)
    return text.split(";", 1)[0] if ";" in text else ""


def job_label(job: Job, params: list[str]) -> str:
    """The job's swept settings, each key by its last part (``beta=4 latent_dim=10``), else its number."""
    return " ".join(f"{p.rsplit('.', 1)[-1]}={job.overrides[p]}" for p in params if p in job.overrides) or f"job {job.name}"


def _sorted_done(jobs: list[Job], metric: str, descending: bool) -> list[Job]:
    done = [j for j in jobs if j.status == "done"]
    return sorted(done, key=lambda j: (metric not in j.metrics, j.metrics.get(metric, math.inf) * (-1 if descending else 1)))


def write_tables(sweep: Path, jobs: list[Job], metric: str, descending: bool) -> tuple[Path, Path]:
    params = sorted({k for job in jobs for k in job.overrides})
    metric_names = sorted({k for job in jobs for k in job.metrics})
    columns = ["job", "status", *params, *metric_names, "error"]
    ordered = _sorted_done(jobs, metric, descending) + [j for j in jobs if j.status != "done"]
    rows = [[j.name, j.status, *(j.overrides.get(p, "") for p in params),
             *(f"{j.metrics[m]:.6g}" if m in j.metrics else "" for m in metric_names), j.error] for j in ordered]
    with atomic_file(sweep / "summary.csv", "w") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    swept = swept_parameters(jobs)
    with_status = any(j.status != "done" for j in jobs)
    shown = ["job", *(["status"] if with_status else []), *swept, *([metric] if metric in metric_names else []),
             *(m for m in metric_names if m != metric)]
    text = io.StringIO()
    text.write(f"# Sweep {sweep}\n\n{len(jobs)} jobs: " + ", ".join(
        f"{sum(j.status == s for j in jobs)} {s}" for s in ("done", "failed", "running")) +
        f"; sorted by {metric} ({'descending' if descending else 'ascending'})\n\n")
    shared = shared_settings(jobs)
    if shared:
        text.write("Every job: " + " ".join(f"`{k}={v}`" for k, v in shared.items()) + "\n\n")
    text.write("| " + " | ".join(shown) + " |\n|" + " --- |" * len(shown) + "\n")
    for j in ordered:
        cells = [j.name, *([j.status] if with_status else []), *(j.overrides.get(p, "") for p in swept)]
        cells += [f"{j.metrics[m]:.4f}" if m in j.metrics else "" for m in shown[len(cells):]]
        text.write("| " + " | ".join(cells) + " |\n")
    units: dict[str, list[str]] = {}
    for m in shown:
        if unit(m):
            units.setdefault(unit(m), []).append(m)
    if units:
        text.write("\nUnits: " + "; ".join(f"{u}: {', '.join(ms)}" for u, ms in units.items()) + "\n")
    problems = [j for j in jobs if j.status != "done"]
    if problems:
        text.write("\nNot done:\n\n" + "".join(f"- job {j.name} ({j.status}): {j.error}\n" for j in problems))
    with atomic_file(sweep / "summary.md", "w") as f:
        f.write(text.getvalue())
    return sweep / "summary.csv", sweep / "summary.md"


def x_value(job: Job, x: str) -> str | float | None:
    """The job's value of ``x``: a metric it logged, else its override, else its saved config's
    value at that path (None where it has none)."""
    if x in job.metrics:
        return job.metrics[x]
    if x in job.overrides:
        return job.overrides[x]
    value = OmegaConf.select(job.config, x, default=None, throw_on_resolution_failure=False)
    return None if value is None or OmegaConf.is_config(value) else value


def _scatter(plt, done: list[Job], y: str, x: str, swept: list[str]):
    """``y`` against ``x`` for the done jobs that have both (numbers on a number axis, else one
    tick per category), each point labelled by its job's swept settings; None if no job has both."""
    have = [(j, v) for j in done if y in j.metrics for v in [x_value(j, x)] if v is not None]
    if not have:
        return None
    values = [v for _, v in have]
    try:
        xs = [float(v) for v in values]
        categories = None
    except ValueError:
        categories = sorted({str(v) for v in values})
        xs = [categories.index(str(v)) for v in values]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, [j.metrics[y] for j, _ in have])
    labelled = [p for p in swept if p != x]
    if labelled:
        for (j, _), px in zip(have, xs):
            ax.annotate(job_label(j, labelled), (px, j.metrics[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(f"{x} ({unit(x)})" if unit(x) else x)
    ax.set_ylabel(f"{y} ({unit(y)})" if unit(y) else y)
    ax.set_title(f"{y} against {x} ({len(have)} done jobs)")
    fig.tight_layout()
    return fig


def make_plots(sweep: Path, jobs: list[Job], metric: str, plot_metrics: list[str] | None = None,
               against: list[str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    from vaelab.tensorboard import add_image, figure_pixels

    done = [j for j in jobs if j.status == "done"]
    swept = swept_parameters(jobs)
    split = "test" if any("test/kl" in j.metrics for j in done) else "val"
    figures = {}
    points = [j for j in done if f"{split}/kl" in j.metrics and f"{split}/recon" in j.metrics]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter([j.metrics[f"{split}/kl"] for j in points], [j.metrics[f"{split}/recon"] for j in points])
        for j in points:
            ax.annotate(job_label(j, swept), (j.metrics[f"{split}/kl"], j.metrics[f"{split}/recon"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"rate: {split}/kl ({unit(f'{split}/kl')})")
        ax.set_ylabel(f"distortion: {split}/recon ({unit(f'{split}/recon')})")
        ax.set_title(f"Rate and distortion of the {len(points)} done jobs ({split} split)")
        figures["rate_distortion"] = fig
    for y in plot_metrics or [metric]:
        for x in against or swept:
            figure = _scatter(plt, done, y, x, swept)
            if figure is not None:
                figures[f"{y.replace('/', '_')}_vs_{x.replace('/', '_')}"] = figure
    written = []
    (sweep / "plots").mkdir(exist_ok=True)
    with SummaryWriter(str(sweep / "tensorboard")) as writer:
        for name, fig in figures.items():
            with atomic_file(sweep / "plots" / f"{name}.png") as f:
                fig.savefig(f, format="png", dpi=100)
            add_image(writer, f"sweep/{name}", figure_pixels(fig), 0, fig.axes[0].get_title())
            written.append(sweep / "plots" / f"{name}.png")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaelab-summarize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a multirun folder, e.g. outputs/train/multirun/<time>")
    parser.add_argument("--metric", default="test/nelbo", help="metric to sort by and plot (default test/nelbo)")
    parser.add_argument("--descending", action="store_true", help="sort from the largest value")
    parser.add_argument("--plot", nargs="+", metavar="METRIC", help="metrics to plot (default: --metric)")
    parser.add_argument("--against", nargs="+", metavar="X",
                        help="x axes: config paths (objective.beta) or metrics (test/recon); default: the swept settings")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"vaelab-summarize: error: {args.sweep} is not a folder: pass a sweep folder "
              "(outputs/train/multirun/<time>)", file=sys.stderr)
        return 2
    jobs = read_jobs(args.sweep)
    if not jobs:
        print(f"vaelab-summarize: error: {args.sweep} holds no job folders (subfolders with .hydra/)", file=sys.stderr)
        return 2
    known = {k for job in jobs for k in job.metrics}
    if any(j.status == "done" for j in jobs):
        for option, name in [("--metric", args.metric), *(("--plot", m) for m in args.plot or [])]:
            if name not in known:
                print(f"vaelab-summarize: error: no job logged {name}; choose {option} from: {', '.join(sorted(known))}",
                      file=sys.stderr)
                return 2
    csv_path, md_path = write_tables(args.sweep, jobs, args.metric, args.descending)
    plots = make_plots(args.sweep, jobs, args.metric, args.plot, args.against)
    print(md_path.read_text())
    print(f"wrote {csv_path}, {md_path} and {len(plots)} plots in {args.sweep / 'plots'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
