"""The rest of the pipeline on a user's unlabelled folder: FFCV .beton files from
`prepare-data --dataset folder`, generate, train-ddpm and sample, and a one-trial Ray Tune sweep
on the held-out ELBO. Synthetic-size models, seconds each (the sweep: a local Ray start)."""
from __future__ import annotations

import importlib.util

import pytest

from structgen.api import train_tree
from structgen.cli import main
from test_user_runs import tiny_cfg
from user_images import digits_pngs

needs_ffcv = pytest.mark.skipif(importlib.util.find_spec("ffcv") is None, reason="ffcv not installed")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    root = digits_pngs(tmp / "pngs", n=64)
    run_dir, _ = train_tree(tiny_cfg(tmp, root, "run.name=vae", "training.grow=false",
                                     "training.num_epochs_finetuning=0"), evaluate=False)
    return tmp, root, run_dir


@needs_ffcv
def test_prepare_data_writes_betons_of_a_folder_and_training_reads_them(folder_run, capsys):
    tmp, root, _ = folder_run
    ffcv = tmp / "ffcv"
    assert main(["prepare-data", "--dataset", "folder", "--path", str(root), "--format", "ffcv",
                 "--ffcv-dir", str(ffcv), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "per class: unlabelled" in out and f"--set data.path={root}" in out
    assert (ffcv / "folder-train.beton").exists() and (ffcv / "folder-test.beton").exists()
    assert not list(root.glob("*.beton")), "nothing is written into the user's folder"
    run_dir, _ = train_tree(tiny_cfg(tmp, root, "run.name=ffcv", "training.grow=false", "data.loader=ffcv",
                                     f"data.ffcv_dir={ffcv}", "training.num_epochs_finetuning=0"), evaluate=False)
    assert (run_dir / "checkpoints" / "final.pt").exists()


def test_generate_train_ddpm_and_sample_on_a_folder_run(folder_run, capsys):
    from structgen.api import generate
    from structgen.ddpm_api import sample, train_ddpm

    tmp, root, vae_dir = folder_run
    for mode in ("vae_samples", "vae_recons"):
        assert any(p.suffix == ".png" for p in generate(vae_dir, mode, 4))
    cfg = tiny_cfg(tmp, root, "diffusion.dim=16", "diffusion.n_heads=4", "diffusion.n_residual=1",
                   "diffusion.attn_resolutions=[]", "diffusion.batch_size=16", "diffusion.epochs=1",
                   "diffusion.warmup_steps=2", "diffusion.n_timesteps=50", "diffusion.sampler=ddim",
                   "diffusion.n_steps=3", "diffusion.sample_every=0", "diffusion.n_samples=2")
    ddpm_dir = train_ddpm(cfg, vae_dir)
    ddpm_dir = ddpm_dir[0] if isinstance(ddpm_dir, tuple) else ddpm_dir
    for mode in ("sample", "recons"):
        assert sample(ddpm_dir, mode, 2), mode


@pytest.mark.slow
def test_tune_sweep_on_an_unlabelled_folder(folder_run, tmp_path):
    from structgen.launch.ray_cluster import init_ray
    from structgen.launch.tune_sweep import run_sweep, summarise
    from structgen.sweeps import load_sweep

    import yaml

    _, root, _ = folder_run
    sweep_file = tmp_path / "sweep.yml"
    sweep_file.write_text(yaml.safe_dump({"stage": "tree", "metric": "elbo", "mode": "max", "num_samples": 1,
                                          "scheduler": "fifo", "params": {"training.lr": {"choice": [1e-3]}}}))
    sweep = load_sweep(sweep_file)
    cfg = tiny_cfg(tmp_path, root, "training.grow=false", "evaluation.baselines=false")
    ray = init_ray(num_cpus=2)
    try:
        experiment, results = run_sweep(cfg, sweep, "unlabelled", tmp_path / "tune")
        info = summarise(cfg, sweep, experiment, results)
    finally:
        ray.shutdown()
    assert len(results) == 1 and not results.errors
    best = results.get_best_result(metric="elbo", mode="max").metrics
    assert best["final"] and best["elbo"] < 0 and "nmi" not in best
    assert info["best"].exists()
