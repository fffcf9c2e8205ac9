"""Stage-2 speed: DDIM-n against ancestral DDPM-T sampling (images/s, same model, same run) with
a quality proxy for each, and DDPM training images/s.

    .venv/bin/python benchmarks/diffusion_speed.py                 # ~1.5 min on 2 CPU cores (1 thread)
    .venv/bin/python benchmarks/diffusion_speed.py --run RUN_DIR   # an existing DDPM run instead

Without --run it trains a tiny TreeVAE and a small DDPM (T = 1000) on `synthetic` first; its
quality numbers then only rank the samplers against each other. The proxy is the `recons`
mode's mean squared error to the encoded test images (most probable leaf, same inputs, same
seed for every sampler), beside the TreeVAE's own reconstruction error. The reference-size
UNet (dim 64, 9.3 M parameters, algorithm.md §10) is timed for a few steps as well.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ddpm_step import unet_step

from structgen.api import train_tree
from structgen.config import load_config
from structgen.ddpm_api import load_ddpm, train_ddpm
from structgen.diffusion.conditioning import ConditionalUNet, SignalEmbedding
from structgen.diffusion.modes import DiffusionSampler, SamplerOptions
from structgen.diffusion.schedule import NoiseSchedule
from structgen.diffusion.unet import UNet, UNetSpec
from structgen.data.run_data import load_run_data

DATA = ["data.dataset=synthetic", "data.train_subset=512", "data.test_subset=64", "run.progress=plain"]
VAE = DATA + ["training.batch_size=128", "training.num_epochs=3", "training.initial_depth=2", "training.grow=false",
              "training.prune=false", "training.num_epochs_finetuning=0", "training.kl_start=0.1"]
DDPM = DATA + ["diffusion.dim=16", "diffusion.n_heads=4", "diffusion.n_residual=1", "diffusion.attn_resolutions=[]",
               "diffusion.dropout=0.1", "diffusion.batch_size=32", "diffusion.warmup_steps=50", "diffusion.lr=1e-3",
               "diffusion.sample_every=0", "diffusion.conditioning=leaf"]


def train_small_run(root: Path, epochs: int, threads: int) -> Path:
    sets = [f"run.runs_dir={root}", f"run.threads={threads}"]
    vae_dir, _ = train_tree(load_config(None, VAE + sets + ["run.name=vae"]), evaluate=False)
    return train_ddpm(load_config(None, DDPM + sets + [f"diffusion.epochs={epochs}"]), vae_dir)


def training_images_per_s(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r["event"] == "ddpm_epoch"]
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def reference_size_step(conditioner, batch: int, repeats: int) -> tuple[float, float]:
    """(train images/s, seconds per sampling step at batch 16) of the dim-64 MNIST UNet."""
    torch.manual_seed(0)
    spec = UNetSpec(conditioner.image_shape, dim=64, attn_resolutions=[])
    model = ConditionalUNet(UNet(spec), SignalEmbedding("leaf", spec.emb_dim, conditioner.n_leaves))
    x01 = torch.rand(batch, *conditioner.image_shape)
    step = unet_step(model, NoiseSchedule(), torch.contiguous_format, x01,
                     lambda: conditioner.posterior_condition(x01, "sample"))     # as DDPMTrainer.train_step conditions
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    train_rate = batch * repeats / (time.perf_counter() - start)
    model.eval()
    x = torch.randn(16, *conditioner.image_shape)
    parts = conditioner.prior(16)
    cond = conditioner.condition(parts, parts.probs.argmax(1))
    with torch.no_grad():
        model(x, torch.full((16,), 999), cond)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, torch.full((16,), 999), cond)
    return train_rate, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an existing DDPM run (default: train a small one on synthetic)")
    parser.add_argument("--epochs", type=int, default=6, help="DDPM epochs of the small run (16 steps each)")
    parser.add_argument("--n", type=int, default=8, help="test images per sampler")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--skip-reference-size", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = Path(args.run) if args.run else train_small_run(Path(tmp), args.epochs, args.threads)
        if not args.run:
            print(f"trained the small run in {time.perf_counter() - start:.0f} s")
        model, conditioner, schedule, state = load_ddpm(run)
        cfg = load_config(run / "config.yml")
        test = load_run_data(cfg).test
        originals = test.images[:args.n].astype(np.float32) / 255.0
        train_rate = training_images_per_s(run)
        print(f"\nrun {run.name}: {sum(p.numel() for p in model.parameters()):,} parameters, step {state['step']}, "
              f"T = {schedule.T}, {conditioner.n_leaves} leaves")
        print(f"training: {train_rate:.1f} images/s (batch {cfg.diffusion.batch_size}, median over epochs)")

        rows = []
        settings = [("ddpm", None)] + [("ddim", n) for n in args.ddim_steps]
        for sampler, steps in settings:
            opts = SamplerOptions(sampler=sampler, n_steps=steps, spacing="quad", leaf_choice="max")
            runner = DiffusionSampler(model, conditioner, schedule, opts, "cpu", batch_size=args.n)
            result = runner.run("recons", args.n, seed=0, originals=test.images)
            mse = float(np.mean((result["images"] - originals) ** 2))
            rows.append((opts.tag(schedule.T), float(result["images_per_s"]), mse))
        vae_mse = float(np.mean((result["vae"] - originals) ** 2))

        base = rows[0][1]
        print(f"\nsampling {args.n} test reconstructions (recons mode, most probable leaf), batch {args.n}:")
        print(f"{'sampler':<12}{'images/s':>10}{'x DDPM':>9}{'MSE to input':>15}")
        for tag, rate, mse in rows:
            print(f"{tag:<12}{rate:>10.2f}{rate / base:>9.1f}{mse:>15.4f}")
        print(f"{'TreeVAE':<12}{'':>10}{'':>9}{vae_mse:>15.4f}   (the conditioning image itself)")

        if not args.skip_reference_size:
            train_rate, step_s = reference_size_step(conditioner, batch=32, repeats=3)
            print(f"\nreference-size UNet (dim 64, 9.26 M + leaf embedding): train {train_rate:.1f} images/s "
                  f"at batch 32; "
                  f"one sampling step at batch 16: {step_s:.3f} s (DDPM-1000: {1000 * step_s:.0f} s per 16 images)")
        print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
