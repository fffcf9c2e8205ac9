"""The demo's schedule sweep, scored on a validation part of the training split.

    .venv/bin/python benchmarks/demo_sweep.py [--seed 42] [--sweep configs/sweeps/demo_schedule.yml]

Writes the seed's training split as an `arrays` file (80 % trains, 20 % is scored: the test
images are never read, as in `demo_quality.py --validation`) and runs the Ray Tune driver
(`ray_jobs/tune.py`) on it. The table, `best.yml` and plots land in `<runs-dir>/tune/<name>`;
re-running the same command resumes an interrupted sweep.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mnist_quality import validation_overrides

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/digits.yml")
    parser.add_argument("--sweep", default="configs/sweeps/demo_schedule.yml")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="demo_schedule")
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir).resolve()
    scratch = runs_dir / "validation"            # kept: a resumed sweep reads the same file
    scratch.mkdir(parents=True, exist_ok=True)
    sets = args.overrides + [f"run.seed={args.seed}", f"run.runs_dir={runs_dir}", "run.progress=plain"]
    sets += validation_overrides(args.config, args.overrides, args.seed, scratch)
    command = [sys.executable, str(ROOT / "ray_jobs" / "tune.py"), "--config", args.config, "--sweep", args.sweep,
               "--name", args.name, *[part for s in sets for part in ("--set", s)]]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
