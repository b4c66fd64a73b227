"""Rerun a recorded run and compare: ``python -m vaelab.rerun <run folder>`` (``vaelab-rerun``).

Re-executes the run from what it recorded (``.hydra/config.yaml``, the composed config with
every override applied) into a new folder ``<root>/outputs/rerun/runs/<time>``, then compares the
new ``metrics.json`` with the old one, value by value. Prints ``metrics identical`` and exits 0
when every value matches (expected on the CPU with ``trainer.deterministic=true``); otherwise
prints each differing metric and exits 1. Warns when the code version (vaelab version or git
commit, from ``run_info.json``) differs from the one that made the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from vaelab import run_info

# what legitimately differs between a run and its rerun
VOLATILE = {"wall_time_s", "config_path", "test_ckpt_path"}


def compare(old: dict, new: dict) -> list[str]:
    """One line per metric whose value differs (or exists on one side only)."""
    lines = []
    for key in sorted((set(old) | set(new)) - VOLATILE):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if a != b:
            delta = f" (difference {b - a:+.6g})" if isinstance(a, float) and isinstance(b, float) else ""
            lines.append(f"{key}: {a} -> {b}{delta}")
    return lines


def version_warnings(recorded: dict) -> list[str]:
    commit, dirty = run_info.git_state(Path(run_info.__file__).parent)
    import vaelab

    warnings = []
    if recorded.get("vaelab_version") != vaelab.__version__:
        warnings.append(f"vaelab version differs: recorded {recorded.get('vaelab_version')}, now {vaelab.__version__}")
    if recorded.get("git_commit") and recorded.get("git_commit") != commit:
        warnings.append(f"code version differs: recorded commit {recorded.get('git_commit')}, now {commit}")
    if recorded.get("git_dirty") or dirty:
        warnings.append("the recorded or the current code had uncommitted changes: results may differ")
    return warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaelab-rerun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder, e.g. outputs/train/runs/<time>")
    args = parser.parse_args(argv)
    run = args.run.resolve()
    config = run / ".hydra" / "config.yaml"
    if not config.is_file() or not (run / "metrics.json").is_file():
        print(f"vaelab-rerun: error: {run} is not a finished run folder (needs .hydra/config.yaml and metrics.json)",
              file=sys.stderr)
        return 2
    info_file = run / "run_info.json"
    for warning in version_warnings(json.loads(info_file.read_text()) if info_file.is_file() else {}):
        print(f"vaelab-rerun: warning: {warning}", file=sys.stderr)
    root = Path(os.environ.get("VAELAB_ROOT", os.getcwd()))
    new = root / "outputs" / "rerun" / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    command = [sys.executable, "-m", "vaelab.train", "--config-path", str(config.parent), "--config-name", "config",
               f"hydra.run.dir={new}", "hydra.job.name=train"]
    print("rerunning:", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        print(f"vaelab-rerun: error: the rerun failed (see {new})", file=sys.stderr)
        return 1
    differences = compare(json.loads((run / "metrics.json").read_text()), json.loads((new / "metrics.json").read_text()))
    if differences:
        print(f"metrics differ ({len(differences)}), {run} -> {new}:")
        print("\n".join(f"  {line}" for line in differences))
        return 1
    print(f"metrics identical ({new})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
