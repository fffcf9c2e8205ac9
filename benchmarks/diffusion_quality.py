"""Quality of Diffuse-TreeVAE samples on MNIST with a CPU-sized schedule (issue target: the
diffusion samples are closer to the test set in classifier-Fréchet distance than the TreeVAE's
own samples, with per-leaf generation purity at most 0.05 below the TreeVAE's).

    .venv/bin/python benchmarks/diffusion_quality.py --vae RUN_DIR [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/diffusion_quality.py --ddpm RUN_DIR       # score a trained DDPM

--vae: a trained MNIST TreeVAE run (benchmarks/mnist_quality.py makes one). The DDPM is trained
on it with configs/mnist.yml plus the small UNet and short schedule below (override any key
with --set), unless --ddpm names a trained one. Then `structgen score-ddpm` scores both models
on the same root samples with two MNIST classifiers (each trained first when missing): the
default one (sharp digits only) and one trained with `--degrade` (blurred and hazed digits too),
because the default one calls most blurry TreeVAE samples an 8, which inflates their purity.
Prints the tables, the target check per classifier and the wall times.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from structgen.config import load_config
from structgen.ddpm_api import score_ddpm, train_ddpm
from structgen.scoring.classifier import default_classifier_path, train_classifier

CPU_DDPM = [
    "diffusion.dim=16", "diffusion.dim_mults=[1,2,2]", "diffusion.n_residual=1", "diffusion.attn_resolutions=[]",
    "diffusion.dropout=0.1", "diffusion.n_heads=4", "diffusion.lr=0.001", "diffusion.warmup_steps=200",
    "diffusion.ema_decay=0.999", "diffusion.batch_size=128", "diffusion.epochs=6", "diffusion.sample_every=3",
    "diffusion.checkpoint_every_steps=100", "diffusion.sampler=ddim", "diffusion.n_steps=50",
    "run.progress=plain",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", help="trained MNIST TreeVAE run folder (to train a DDPM on)")
    parser.add_argument("--ddpm", help="score this trained DDPM run instead of training one")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--runs-dir", default="runs/benchmarks")
    parser.add_argument("--n", type=int, default=1000, help="root samples for CFD")
    parser.add_argument("--per-leaf", type=int, default=100, help="images per leaf for purity")
    args = parser.parse_args()
    if not (args.vae or args.ddpm):
        parser.error("pass --vae RUN_DIR (train a DDPM on it) or --ddpm RUN_DIR (score a trained one)")
    times = {}
    classifiers = {"default": default_classifier_path("mnist"),
                   "degrade": default_classifier_path("mnist").with_name("mnist-degrade.pt")}
    for kind, path in classifiers.items():
        if not path.exists():
            start = time.perf_counter()
            train_classifier("mnist", out=path, degrade=kind == "degrade")
            times[f"classifier_{kind}_min"] = round((time.perf_counter() - start) / 60, 1)
    ddpm = args.ddpm
    if ddpm is None:
        cfg = load_config("configs/mnist.yml", CPU_DDPM + [f"run.runs_dir={args.runs_dir}"] + args.overrides)
        start = time.perf_counter()
        ddpm = train_ddpm(cfg, args.vae)
        times["ddpm_train_min"] = round((time.perf_counter() - start) / 60, 1)
    for kind, path in classifiers.items():
        start = time.perf_counter()
        scores, written = score_ddpm(ddpm, classifier=path, n=args.n, per_leaf=args.per_leaf,
                                     out_dir=Path(ddpm) / "scores" / f"benchmark-{kind}")
        vae, diff = scores["vae"], scores["diffusion"]
        summary = {"classifier": kind, "vae_cfd": round(vae["cfd"], 3), "diffusion_cfd": round(diff["cfd"], 3),
                   "train_floor_cfd": round(scores["train_floor_cfd"], 3), "vae_purity": round(vae["purity"], 4),
                   "diffusion_purity": round(diff["purity"], 4), **times,
                   "scoring_min": round((time.perf_counter() - start) / 60, 1), "ddpm_run": str(ddpm),
                   "scores": str(Path(written[0]))}
        print("RESULT " + json.dumps(summary))
        closer = diff["cfd"] < vae["cfd"]
        pure = diff["purity"] >= vae["purity"] - 0.05
        print(f"[{kind} classifier] diffusion CFD below the TreeVAE's: {'met' if closer else 'NOT met'};  "
              f"purity within 0.05 of the TreeVAE's: {'met' if pure else 'NOT met'}")


if __name__ == "__main__":
    main()
