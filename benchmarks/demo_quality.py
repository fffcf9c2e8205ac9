"""The demo's clustering (digits) over seeds, beside k-means and Ward on pixels.

    .venv/bin/python benchmarks/demo_quality.py [--seeds 42 0 1] [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/demo_quality.py --validation [--seeds 42 0] [--set KEY=VALUE ...]

Without `--validation` every seed is one `make demo` run (its seeded 80/20 split, the test
images scored): the demo's bar is the tree above both baselines in ACC and NMI for each seed.
With `--validation` the test images are never read: each seed's training split is itself split
80/20 (a `data.dataset: arrays` file written to a scratch folder) and the tree and baselines
are scored on that validation part. Settings are chosen that way, then confirmed once on test.
"""
from __future__ import annotations

import argparse
import statistics

from mnist_quality import seeded_runs, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/digits.yml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--validation", action="store_true", help="score a validation part of the training split")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    args = parser.parse_args()
    runs = seeded_runs(args.config, args.overrides, args.seeds, args.runs_dir, args.validation)
    scored = "validation part of the training split" if args.validation else "test split"
    print(f"\n{args.config} {' '.join(args.overrides)}, seeds {args.seeds}, scored on the {scored}")
    print(f"{'':22}{'ACC':>16}{'NMI':>16}{'minutes':>10}")
    print(f"{'CNN-TreeVAE':22}{spread([r['acc'] for r in runs]):>16}{spread([r['nmi'] for r in runs]):>16}"
          f"{statistics.fmean(r['wall_minutes'] for r in runs):>10.1f}")
    for method in ("kmeans", "ward"):
        print(f"{method + ' (pixels)':22}{spread([r[method]['acc'] for r in runs]):>16}"
              f"{spread([r[method]['nmi'] for r in runs]):>16}")
    ahead = [r["seed"] for r in runs if all(r[m] > max(r["kmeans"][m], r["ward"][m]) for m in ("acc", "nmi"))]
    print(f"tree ahead of both baselines in ACC and NMI for seeds {ahead} of {args.seeds}")


if __name__ == "__main__":
    main()
