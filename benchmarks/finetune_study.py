"""The final finetuning of one grown tree under several settings: where each leaf's mass goes
epoch by epoch, which leaves it empties, the held-out ELBO and the clusters.

    .venv/bin/python benchmarks/finetune_study.py [--seed 42] \
        [--variant gentle=training.kl_anneal=step,training.retrain_warmup_epochs=1 ...]
    .venv/bin/python benchmarks/finetune_study.py --checkpoint OUT/before_finetuning.pt --variant ...

Grows one MNIST tree at the reference's compressed schedule (5/3/1/3 epochs, as
`mnist_quality.py --reference-schedule`), stops where the finetuning begins and keeps that
checkpoint (`--checkpoint` reuses one), then runs the finetuning and the final prune from a copy
of it once per variant; `reference` (the defaults) always runs first. Choose between variants by
the test ELBO (no labels) and the training-label clusters; the test clusters are the report.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mnist_quality import REFERENCE_SCHEDULE

from structgen.api import evaluate_run, train_tree
from structgen.config import load_config, save_config
from structgen.runs import last_checkpoint
from structgen.runtime.context import Context, resolve_device
from structgen.runtime.metrics_log import MetricsLog, read_metrics
from structgen.runtime.progress import Progress
from structgen.runtime.tree_checkpoint import load_checkpoint
from structgen.data.run_data import load_run_data
from structgen.train.growth import TreeTrainer


class FinetuningBegins(Exception):
    pass


def grow(cfg, out: Path) -> Path:
    """Train until the checkpoint written after the first prune; keep a copy of it."""
    def stop_there(state: dict, path) -> None:
        growth = state["growth"]
        if growth["stage"] == "finetune" and growth["phase"] is None:
            raise FinetuningBegins

    run_dir = out / "grown"
    try:
        train_tree(cfg, ctx=Context(run_dir=run_dir, on_checkpoint=stop_there), evaluate=False, run_dir=run_dir)
    except FinetuningBegins:
        pass
    else:
        raise SystemExit("the run ended without a finetuning (num_epochs_finetuning = 0?)")
    saved = out / "before_finetuning.pt"
    shutil.copyfile(last_checkpoint(run_dir), saved)
    return saved


def finetune(cfg, checkpoint: Path, run_dir: Path) -> dict:
    """The rest of the schedule (finetuning, final prune) from ``checkpoint`` with ``cfg``, evaluated."""
    state = load_checkpoint(checkpoint)
    if state["growth"]["stage"] != "finetune":
        raise SystemExit(f"{checkpoint}: written at stage {state['growth']['stage']!r}, not where the finetuning begins")
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yml", header=f"finetuning study from {checkpoint}")
    data = load_run_data(cfg)
    ctx = Context(run_dir=run_dir, device=resolve_device(cfg.run.device))
    log = MetricsLog(run_dir)
    model = TreeTrainer(cfg, ctx, data, log, Progress("plain"), resume=state).run()
    report = evaluate_run(run_dir, cfg=cfg, model=model, data=data, ctx=ctx, log=log)
    log.close()
    epochs = [r for r in read_metrics(run_dir) if r["event"] == "epoch"]
    report["emptiest"] = [min(r["leaf_mass"].items(), key=lambda kv: kv[1]) for r in epochs]
    report["pruned"] = [r["leaf"] for r in read_metrics(run_dir) if r["event"] == "prune_after_finetuning"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--config", default="configs/mnist.yml")
    parser.add_argument("--checkpoint", help="a checkpoint where the finetuning begins (skips growing)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="for growth and every variant")
    parser.add_argument("--out", default="runs/benchmarks/finetune_study")
    args = parser.parse_args()

    base = REFERENCE_SCHEDULE + args.overrides + [f"run.seed={args.seed}", "run.progress=plain",
                                                  "evaluation.baselines=false"]
    out = Path(args.out) / f"seed{args.seed}"
    variants = {"reference": []}
    for spec in args.variant:
        name, _, keys = spec.partition("=")
        variants[name] = keys.split(",")
    configs = {name: load_config(args.config, base + keys) for name, keys in variants.items()}   # all checked first
    taken = [str(out / name) for name in [*variants, *([] if args.checkpoint else ["grown"])] if (out / name).exists()]
    if taken:
        raise SystemExit(f"finetune_study: already there (choose another --out): {', '.join(taken)}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else grow(load_config(args.config, base), out)

    rows = []
    for name, cfg in configs.items():
        report = finetune(cfg, checkpoint, out / name)
        row = {"variant": name, "leaves": report["n_leaves"], "pruned": report["pruned"],
               "emptiest_per_epoch": [f"{leaf} {mass:.1%}" for leaf, mass in report["emptiest"]],
               "test_elbo": round(report["elbo"], 2), "train_acc": round(report["train"]["acc"], 4),
               "train_nmi": round(report["train"]["nmi"], 4), "test_acc": round(report["acc"], 4),
               "test_nmi": round(report["nmi"], 4)}
        print("RESULT " + json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nfinetuning from {checkpoint}")
    print(f"{'variant':12}{'leaves':>7}  {'emptiest leaf, mean mass per epoch':44}{'test ELBO':>10}"
          f"{'train ACC/NMI':>16}{'test ACC/NMI':>16}")
    for r in rows:
        print(f"{r['variant']:12}{r['leaves']:>7}  {', '.join(r['emptiest_per_epoch']):44}{r['test_elbo']:>10.2f}"
              f"{r['train_acc']:>9.3f}/{r['train_nmi']:.3f}{r['test_acc']:>9.3f}/{r['test_nmi']:.3f}")


if __name__ == "__main__":
    main()
