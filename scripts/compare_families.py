"""Train the plain VAE and the richer model families with one budget and compare their test NLL.

    python scripts/compare_families.py                       # the issue's protocol (GPU): 8 min, IWAE-5000
    python scripts/compare_families.py --minutes 3 --iw-samples 500 --test-batches 4 --accelerator cpu
    python scripts/compare_families.py --minutes 5 --parallel   # all at once on one GPU (scripts/gpu_checks.sh)

Each family is ``experiment=mnist_nll`` (dynamically binarized MNIST, MLP 784-500-500-50, the
IWAE bound with k=8) plus one override, so model size, data and training budget
(``trainer.max_time``) are the same; each run is then tested with ``--iw-samples`` importance
samples (``test/nll_iw``, nats; lower is better). Runs go to ``outputs/compare_families/<family>``
through the normal CLI; the last lines are a Markdown table. With ``--parallel`` the runs train
at the same time (sharing one GPU, each with the same wall-clock budget; each run's output goes to
``<out>/<family>.log``), which fits the comparison into one device session.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FAMILIES = {  # run folder name: (family, overrides)
    "plain": ("plain VAE", []),
    "iaf": ("IAF posterior", ["posterior=iaf"]),
    "vamp": ("VampPrior", ["prior=vamp"]),
    "hierarchical": ("two-layer (ladder)", ["model=hierarchical"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per family")
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--test-batches", type=int, default=None, help="limit the test set (default: all of it)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--out", default="outputs/compare_families")
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--parallel", action="store_true", help="train every family at the same time")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run (after --)")
    args = parser.parse_args()
    minutes, seconds = divmod(round(args.minutes * 60), 60)
    runs = {}
    for key in args.families:
        run = Path(args.out) / key
        command = [
            sys.executable, "-m", "vaelab.train", "experiment=mnist_nll", *FAMILIES[key][1],
            f"trainer.max_time=00:00:{minutes:02d}:{seconds:02d}", f"eval.iw_samples={args.iw_samples}",
            f"trainer.accelerator={args.accelerator}", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}",
            *([f"+trainer.limit_test_batches={args.test_batches}"] if args.test_batches else []), *args.overrides,
        ]
        print("$", " ".join(command[1:]), flush=True)
        if args.parallel:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            with open(Path(args.out) / f"{key}.log", "w") as log:
                runs[key] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        else:
            runs[key] = subprocess.run(command, check=False)  # (failures are reported together below)
    failed = [key for key, process in runs.items() if (process.wait() if args.parallel else process.returncode)]
    if failed:
        sys.exit(f"compare_families: the run of {', '.join(failed)} failed (see its output above or in {args.out})")
    rows = []
    for key in args.families:
        metrics = json.loads((Path(args.out) / key / "metrics.json").read_text())
        name, family = FAMILIES[key]
        rows.append((name, " ".join(family) or "-", metrics["test/nll_iw"], metrics["test/nelbo"], metrics["epochs"]))
    print("| family | override | test/nll_iw (nats) | test/nelbo | epochs |")
    print("| --- | --- | --- | --- | --- |")
    for name, override, nll, nelbo, epochs in rows:
        print(f"| {name} | `{override}` | {nll:.2f} | {nelbo:.2f} | {epochs} |")


if __name__ == "__main__":
    main()
