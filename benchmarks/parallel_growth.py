"""Parallel against sequential growth on two workers (issue #18 part 5): the same MNIST tree
(seed, schedule, data) grown by `torchrun --nproc_per_node 2` (gloo, one thread per worker)
once with `training.parallel_subtrees=1` (every sub-tree trained by both workers with DDP) and
once with `=2` (rounds of two sub-trees, one per worker, no communication while they train).
Each run is then evaluated in this process on the test split; prints ACC / NMI / DP, the
leaves, and the wall minutes of each part of the schedule with the parallel/sequential ratio.

    .venv/bin/python benchmarks/parallel_growth.py [--seeds 42] [--train-subset 10000] [--set KEY=VALUE ...]

The schedule is the reference's compressed one (5/3/1/3 epochs, `mnist_quality.py
--reference-schedule`) on a seeded subset of the training images, to fit a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from gpu_check import free_port
from mnist_quality import REFERENCE_SCHEDULE, spread

from structgen.api import evaluate_run
from structgen.runtime.metrics_log import read_metrics
from structgen.runtime.part_minutes import part_minutes

MODES = {"sequential": 1, "parallel": 2}
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def grow(mode: str, seed: int, overrides: list[str], runs_dir: Path) -> Path:
    """One two-worker run without evaluation; its progress lines are echoed as they come."""
    name = f"{mode}-seed{seed}"
    sets = overrides + [f"training.parallel_subtrees={MODES[mode]}", f"run.seed={seed}", f"run.name={name}",
                        f"run.runs_dir={runs_dir}", "run.progress=plain", "run.threads=1"]
    command = [TORCHRUN, "--nnodes=1", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "structgen.cli",
               "train-tree", "--no-eval", "--config", "configs/mnist.yml", *[a for s in sets for a in ("--set", s)]]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}) as proc:
        for line in proc.stdout:
            print(f"[{mode}] {line}", end="", flush=True)
    if proc.returncode:
        raise SystemExit(f"{mode} run failed (exit {proc.returncode})")
    return runs_dir / "mnist" / name


def summarise(run_dir: Path) -> dict:
    records = read_metrics(run_dir)
    minutes = part_minutes(run_dir)               # before evaluation: training parts only
    evaluate_run(run_dir, overrides=["run.threads=2"])
    report = [r for r in read_metrics(run_dir) if r["event"] == "evaluation"][-1]
    splits = [r for r in records if r["event"] == "split"]
    return {"acc": report["acc"], "nmi": report["nmi"], "dendrogram_purity": report["dendrogram_purity"],
            "n_leaves": report["n_leaves"], "smallest_leaf_share": min(report["leaf_share"]),
            "splits": len(splits), "workers": [r.get("worker", "all") for r in splits],
            "minutes": {k: round(v, 2) for k, v in minutes.items()},
            "training_minutes": round(sum(minutes.values()), 2), "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmarks/parallel_growth"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    overrides = REFERENCE_SCHEDULE + [f"data.train_subset={args.train_subset}"] + args.overrides
    results = {mode: [] for mode in MODES}
    for seed in args.seeds:
        for mode in MODES:
            results[mode].append(summarise(grow(mode, seed, overrides, args.runs_dir)))
            print("RESULT " + json.dumps({"mode": mode, "seed": seed, **results[mode][-1]}), flush=True)

    print(f"\nMNIST, {args.train_subset} training images, 2 workers x 1 thread, reference schedule "
          f"{' '.join(args.overrides)}, seeds {args.seeds}; scored on the test split")
    print(f"{'':12}{'ACC':>16}{'NMI':>16}{'DP':>16}{'leaves':>8}{'smallest':>10}{'train min':>11}")
    for mode, runs in results.items():
        print(f"{mode:12}{spread([r['acc'] for r in runs]):>16}{spread([r['nmi'] for r in runs]):>16}"
              f"{spread([r['dendrogram_purity'] for r in runs]):>16}{runs[0]['n_leaves']:>8}"
              f"{min(r['smallest_leaf_share'] for r in runs):>10.3f}"
              f"{sum(r['training_minutes'] for r in runs) / len(runs):>11.1f}")
    print("\nwall minutes per part (mean over seeds): sequential, parallel, ratio parallel/sequential")
    parts = dict.fromkeys(p for runs in results.values() for r in runs for p in r["minutes"])
    for part in list(parts) + ["total"]:
        seq, par = (sum(r["training_minutes"] if part == "total" else r["minutes"].get(part, 0.0) for r in runs)
                    / len(runs) for runs in results.values())
        print(f"  {part:<18}{seq:>8.2f}{par:>8.2f}{par / seq if seq else float('nan'):>8.2f}")
    if args.out:
        args.out.write_text(json.dumps({"train_subset": args.train_subset, "overrides": args.overrides,
                                        "seeds": args.seeds, "results": results}, indent=1))


if __name__ == "__main__":
    main()
