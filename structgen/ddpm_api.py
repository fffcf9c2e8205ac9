"""The Python API of stage 2 (what `structgen train-ddpm`, `sample` and `compare-ddpm` call).

    from structgen.config import load_config
    from structgen.ddpm_api import train_ddpm, sample
    run_dir = train_ddpm(load_config("configs/digits.yml"), vae_run="runs/digits/<tree run>")
    paths = sample(run_dir, "sample_all_leaves", n=8, sampler="ddim", steps=50)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from structgen.config import Config, ConfigError, load_config, save_config
from structgen.diffusion import ddpm_checkpoint as ddpm_ckpt
from structgen.diffusion.modes import MODES, DiffusionSampler, SamplerOptions, write_outputs
from structgen.diffusion.conditioning import ConditionalUNet
from structgen.diffusion.schedule import NoiseSchedule
from structgen.diffusion.vae_condition import VAEConditioner, vae_from_state, vae_state
from structgen.errors import CheckpointError
from structgen.run_lock import claimed
from structgen.runs import DDPM_PREFIX, RunError, new_run_dir, resume_point, run_config, run_dir_of, run_folder
from structgen.runtime.context import setup_torch
from structgen.runtime.resume import RUN_FREE, check_resumable
from structgen.torch_threads import keep_torch_threads
from structgen.viz.grids import save_side_by_side

# Keys a resumed run may change: where things live, how long to train, how and when to sample.
RESUME_FREE = RUN_FREE + (
    "diffusion.vae_run", "diffusion.epochs", "diffusion.checkpoint_every", "diffusion.sample_every",
    "diffusion.n_samples", "diffusion.sample_batch_size", "diffusion.sampler", "diffusion.variance",
    "diffusion.n_steps", "diffusion.eta", "diffusion.skip_strategy", "diffusion.guidance_weight",
    "diffusion.strength", "diffusion.leaf_choice", "diffusion.checkpoint_every_steps")
# Only these sections shape a DDPM run (the TreeVAE's own keys are frozen inside its checkpoint).
RESUME_CHECKED = ("run.seed", "data.", "diffusion.")


def _with(cfg: Config, section: str, **changes) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def _load_vae(vae_run, cfg: Config, device):
    """The TreeVAE to condition on, checked against the DDPM's data."""
    from structgen.runs import checkpoint_of
    from structgen.runtime.tree_checkpoint import load_model

    ckpt = checkpoint_of(vae_run).resolve()
    vae, _ = load_model(ckpt, device)
    vae_cfg_path = run_dir_of(ckpt) / "config.yml"
    if vae_cfg_path.exists():
        vae_dataset = load_config(vae_cfg_path).data.dataset
        if vae_dataset != cfg.data.dataset:
            raise ConfigError(f"--vae {vae_run}: that TreeVAE was trained on {vae_dataset!r} but data.dataset = "
                              f"{cfg.data.dataset!r}; use the VAE run's dataset")
    return vae, ckpt


def _validate(cfg: Config, image_shape) -> None:
    from structgen.diffusion.unet import UNetSpec

    d = cfg.diffusion
    try:
        UNetSpec.from_config(d, image_shape).validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if d.sampler == "ddim" and d.n_steps > d.n_timesteps:
        raise ConfigError(f"diffusion.n_steps = {d.n_steps} exceeds diffusion.n_timesteps = {d.n_timesteps}")
    if d.guidance_weight > 0 and not d.cfg_rate:
        raise ConfigError(f"diffusion.guidance_weight = {d.guidance_weight:g} needs diffusion.cfg_rate > 0: guidance "
                          f"mixes in the unconditional prediction, which only guidance dropout trains")


@keep_torch_threads()
def train_ddpm(cfg: Config, vae_run: str | Path | None = None, *, resume: bool | str | Path = False, ctx=None,
               run_dir: str | Path | None = None, resume_checkpoint: str | Path | None = None) -> Path:
    """Train a DDPM on the frozen TreeVAE at ``vae_run`` (or diffusion.vae_run); returns the run folder.

    ``resume``: True continues the newest ddpm-* run (or run.name), a path continues that run.
    Launchers that manage their own checkpoints (Ray) pass ``ctx``, ``run_dir`` (the same on every
    rank) and, after a restart, ``resume_checkpoint``. Only the main rank writes files.
    """
    from structgen.runtime.context import Context
    from structgen.runtime.progress import Progress
    from structgen.runtime.metrics_log import MetricsLog
    from structgen.data.run_data import check_batch_fits, load_run_data

    device = setup_torch(cfg) if ctx is None else ctx.device
    is_main = ctx is None or ctx.is_main
    run_dir, ckpt_path = resume_point(cfg, "ddpm", resume=resume, run_dir=run_dir, resume_checkpoint=resume_checkpoint)
    saved = None
    if ckpt_path is not None:
        saved = ddpm_ckpt.load(ckpt_path)
        check_resumable(saved["config"], cfg, ckpt_path, free=RESUME_FREE, checked=RESUME_CHECKED)
        vae_blob = saved["vae"]
        vae = vae_from_state(vae_blob, device)
        cfg = _with(cfg, "diffusion", vae_run=saved["vae_run"])
        cfg = _with(cfg, "run", name=saved["config"]["run"]["name"])
    else:
        vae_run = vae_run or cfg.diffusion.vae_run
        if not vae_run:
            raise ConfigError("train-ddpm needs the TreeVAE to condition on: pass --vae RUN_DIR "
                              "(or set diffusion.vae_run)")
        vae, vae_ckpt = _load_vae(vae_run, cfg, device)
        vae_blob = vae_state(vae, str(vae_ckpt))
        cfg = _with(cfg, "diffusion", vae_run=str(run_dir_of(vae_ckpt)))
    data = load_run_data(cfg)                        # data problems surface before any folder is made
    if tuple(data.image_shape) != tuple(vae.spec.image_shape):
        raise ConfigError(f"data.dataset {cfg.data.dataset!r} has images {data.image_shape} but the TreeVAE "
                          f"expects {tuple(vae.spec.image_shape)}")
    _validate(cfg, data.image_shape)
    check_batch_fits(cfg.diffusion.batch_size, "diffusion.batch_size", data)
    if saved is None:
        run_dir = run_dir or new_run_dir(cfg, DDPM_PREFIX)
        cfg = _with(cfg, "run", name=run_dir.name)
    ctx = ctx or Context(run_dir=run_dir, device=device)
    ctx.run_dir = run_dir
    progress = Progress(cfg.run.progress, enabled=is_main)
    with claimed(run_dir, fresh=saved is None, enabled=is_main, note=progress.line), \
            MetricsLog(run_dir, enabled=is_main) as log:
        _train_in(run_dir, cfg, ctx, data, vae, vae_blob, saved, log, progress, is_main)
    return run_dir


def _train_in(run_dir: Path, cfg: Config, ctx, data, vae, vae_blob, saved, log, progress, is_main: bool) -> None:
    """The DDPM training of ``train_ddpm`` inside its claimed run folder."""
    from structgen.config import config_to_dict
    from structgen.data.loaders import run_loaders
    from structgen.diffusion.loop import DDPMTrainer

    if saved is not None:
        log.truncate(saved["metrics_lines"])
        progress.line(f"resuming {run_dir} at step {saved['step']} (epoch {saved['epoch']}, batch "
                      f"{saved['batch_in_epoch']})")
    elif is_main:
        save_config(cfg, run_dir / "config.yml", header=f"resolved config of DDPM run {run_dir}\ncontinue it: "
                    f"structgen train-ddpm --config {run_dir / 'config.yml'} --resume {run_dir}")
        progress.line(f"run folder: {run_dir}  (TreeVAE: {cfg.diffusion.vae_run})")
    conditioner = VAEConditioner(vae, cfg.diffusion.conditioning)
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    options = SamplerOptions.from_config(cfg.diffusion)

    def preview(model, epoch: int) -> Path:
        sampler = DiffusionSampler(model, conditioner, schedule, options, ctx.device, cfg.diffusion.sample_batch_size)
        result = sampler.run("sample", cfg.diffusion.n_samples, cfg.run.seed)
        return save_side_by_side(result["vae"], result["images"], run_dir / "samples" / "train" /
                                 f"epoch{epoch:05d}.png", titles=("VAE", "DDPM"))

    trainer = DDPMTrainer(cfg.diffusion, cfg.run, ctx, data.train, conditioner, loaders=run_loaders(cfg),
                          record={"config": config_to_dict(cfg), "vae": vae_blob}, log=log, progress=progress,
                          saved=saved, preview=preview)
    trainer.run()
    if is_main and cfg.diffusion.sample_every:
        progress.line(f"samples: {preview(trainer.ema.shadow, trainer.epoch).parent}")


def load_ddpm(path: str | Path, device="cpu", ema: bool = True, state: dict | None = None):
    """(model, conditioner, schedule, state) from a DDPM run folder or checkpoint; EMA weights by default."""
    from structgen.config import config_from_dict

    state = state if state is not None else ddpm_ckpt.load(path)
    try:
        model = ConditionalUNet.build(state["unet_spec"], state["signal"])
        model.load_state_dict(state["ema"]["shadow"] if ema else state["model"], strict=True)
        vae = vae_from_state(state["vae"], device)
        schedule = NoiseSchedule.from_config(config_from_dict(state["config"]).diffusion)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: incompatible DDPM checkpoint: {err}") from None
    conditioner = VAEConditioner(vae, state["signal"]["kind"])
    return model.to(device).eval(), conditioner, schedule, state


def _options(cfg: Config, sampler=None, steps=None, eta=None, guidance=None, leaf_choice=None,
             strength=None) -> SamplerOptions:
    d = cfg.diffusion
    opts = SamplerOptions.from_config(d, sampler=sampler, n_steps=steps, eta=eta, guidance=guidance,
                                      leaf_choice=leaf_choice, strength=strength)
    if opts.sampler == "ddpm" and steps is not None and steps != d.n_timesteps:
        raise ConfigError(f"--steps {steps}: the ddpm sampler runs all T = {d.n_timesteps} steps; "
                          f"use --sampler ddim for fewer")
    if opts.sampler == "ddim" and not 1 <= (opts.n_steps or d.n_timesteps) <= d.n_timesteps:
        raise ConfigError(f"--steps {opts.n_steps}: DDIM needs 1 <= steps <= T = {d.n_timesteps}")
    if not 0 <= opts.eta <= 1 or opts.guidance < 0:
        raise ConfigError(f"--eta must lie in [0, 1] and --guidance be >= 0 (got {opts.eta}, {opts.guidance})")
    if not 0 < opts.strength <= 1:
        raise ConfigError(f"--strength must lie in (0, 1] (1 = start from pure noise); got {opts.strength}")
    return opts


def _check_guidance(guidance: float, state: dict, run) -> None:
    """Guidance mixes in the model's unconditional prediction, which only guidance dropout trains."""
    trained_rate = state["config"]["diffusion"].get("cfg_rate", 0.0)
    if guidance > 0 and not trained_rate:
        raise ConfigError(f"--guidance {guidance:g}: {run_folder(run)} was trained with diffusion.cfg_rate = 0, so "
                          f"its unconditional prediction was never trained; train with diffusion.cfg_rate > 0 "
                          f"(e.g. 0.1) to sample with guidance")


def open_sampler(run, overrides, seed, **flags):
    """(sampler, run config, checkpoint state, seed) to generate from the DDPM run ``run``: a bad
    path, then bad sampler options, are reported before any sampling."""
    from structgen.runtime.progress import Progress

    state = ddpm_ckpt.load(run)
    cfg = run_config(run, overrides)
    device = setup_torch(cfg)
    model, conditioner, schedule, state = load_ddpm(run, device, state=state)
    opts = _options(cfg, **flags)
    _check_guidance(opts.guidance, state, run)
    runner = DiffusionSampler(model, conditioner, schedule, opts, device, cfg.diffusion.sample_batch_size,
                              progress=Progress(cfg.run.progress))
    return runner, cfg, state, cfg.run.seed if seed is None else seed


@keep_torch_threads()
def sample(run: str | Path, mode: str, n: int | None = None, *, sampler: str | None = None, steps: int | None = None,
           eta: float | None = None, guidance: float | None = None, leaf_choice: str | None = None,
           strength: float | None = None, seed: int | None = None, overrides=(),
           out_dir: str | Path | None = None) -> list[Path]:
    """Run one generation mode of a trained DDPM; writes PNGs, figures and a .npz, returns their paths."""
    from structgen.data.run_data import load_run_data

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    runner, cfg, state, seed = open_sampler(run, overrides, seed, sampler=sampler, steps=steps, eta=eta,
                                            guidance=guidance, leaf_choice=leaf_choice, strength=strength)
    opts, conditioner, d = runner.options, runner.conditioner, cfg.diffusion
    n = n or d.n_samples
    test = load_run_data(cfg).test if mode.startswith("recons") else None
    result = runner.run(mode, n, seed, None if test is None else test.images, None if test is None else test.labels)
    meta = {"mode": mode, "sampler": opts.tag(d.n_timesteps), "guidance": opts.guidance, "eta": opts.eta,
            "strength": opts.strength, "leaf_choice": opts.leaf_choice, "seed": seed,
            "conditioning": state["signal"]["kind"], "step": state["step"]}
    out = Path(out_dir) if out_dir else run_folder(run) / "samples" / f"{mode}-{opts.tag(d.n_timesteps)}"
    written = write_outputs(result, out, mode, conditioner.leaves, meta)
    line = f"{mode}: {len(result['images'])} x {conditioner.n_leaves if mode.endswith('_all_leaves') else 1} " \
           f"images with {opts.tag(d.n_timesteps)} in {float(result['seconds']):.1f} s " \
           f"({float(result['images_per_s']):.1f} img/s)"
    if "originals" in result:
        mse = float(np.mean((result["images"] - (result["originals"][:, None] if result["images"].ndim == 5
                                                  else result["originals"])) ** 2))
        line += f"; MSE to the inputs {mse:.4f}"
    print(line)
    return written


@keep_torch_threads()
def score_ddpm(run: str | Path, *, classifier: str | Path | None = None, n: int = 500, per_leaf: int = 50,
               sampler: str | None = None, steps: int | None = None, eta: float | None = None,
               guidance: float | None = None, strength: float | None = None, seed: int | None = None,
               overrides=(), out_dir: str | Path | None = None, floor: bool = True) -> tuple[dict, list[Path]]:
    """Score a DDPM run's generations against its TreeVAE's (structgen.diffusion.score) with the
    dataset's classifier (default runs/classifiers/<dataset>.pt); returns (scores, written files).
    ``floor``: also the CFD of ``n`` training images (the same for every run of a dataset)."""
    from structgen.data.run_data import labelled_test_split
    from structgen.diffusion.score import format_table, score_generations, write_scores
    from structgen.scoring.classifier import default_classifier_path, load_classifier

    if n < 2 or per_leaf < 1:
        raise ConfigError(f"--n must be >= 2 (a Fréchet distance needs a covariance) and --per-leaf >= 1 "
                          f"(got {n}, {per_leaf})")
    runner, cfg, state, seed = open_sampler(run, overrides, seed, sampler=sampler, steps=steps, eta=eta,
                                            guidance=guidance, strength=strength)
    opts, conditioner, dataset = runner.options, runner.conditioner, cfg.data.dataset
    clf_path = Path(classifier) if classifier else default_classifier_path(dataset)
    clf, clf_meta = load_classifier(clf_path, expect_dataset=dataset, expect_shape=conditioner.image_shape,
                                    device=runner.device)
    scores = score_generations(runner, clf, dataset, cfg.data.data_dir, n=n, per_leaf=per_leaf, seed=seed,
                               floor=floor, test=labelled_test_split(cfg))
    meta = {"run": str(run_folder(run)), "step": state["step"], "conditioning": state["signal"]["kind"],
            "sampler": opts.tag(cfg.diffusion.n_timesteps), "guidance": opts.guidance, "strength": opts.strength,
            "seed": seed, "n": n, "per_leaf": per_leaf, "classifier": str(clf_path),
            "classifier_test_accuracy": clf_meta["test_accuracy"]}
    out = Path(out_dir) if out_dir else run_folder(run) / "scores" / opts.tag(cfg.diffusion.n_timesteps)
    written = write_scores(scores, conditioner.tree, out, meta, class_names=clf_meta["class_names"])
    print(format_table(scores))
    return scores, written


@keep_torch_threads()
def compare_ddpm(runs: list[str | Path], n: int = 4, *, labels: list[str] | None = None, sampler: str | None = None,
                 steps: int | None = None, eta: float | None = None, guidance: float | None = None,
                 strength: float | None = None, seed: int | None = None, out: str | Path | None = None) -> Path:
    """The same TreeVAE root samples and the same noise through several DDPMs (e.g. conditioning
    none / leaf / path), every leaf side by side: one figure (+ .npz). The runs must share their TreeVAE."""
    from structgen.diffusion.comparison_figures import compare_figure

    if len(runs) < 2:
        raise RunError("compare-ddpm needs at least two DDPM runs")
    loaded = [load_ddpm(r, setup_torch(run_config(r))) for r in runs]
    ref_vae = loaded[0][3]["vae"]
    for r, (_, _, _, st) in zip(runs[1:], loaded[1:]):
        same = st["vae"]["tree"] == ref_vae["tree"] and all(
            torch.equal(st["vae"]["model"][k], v) for k, v in ref_vae["model"].items())
        if not same:
            raise RunError(f"compare-ddpm: {r} was trained on another TreeVAE ({st['vae']['source']}) than "
                           f"{runs[0]} ({ref_vae['source']}); the same root samples need the same TreeVAE")
    if labels is not None and len(labels) != len(runs):
        raise RunError(f"compare-ddpm: {len(labels)} labels for {len(runs)} runs")
    kinds = [st["signal"]["kind"] for _, _, _, st in loaded]
    labels = labels or (kinds if len(set(kinds)) == len(kinds) else [f"{k} ({run_folder(r).name})"
                                                                      for k, r in zip(kinds, runs)])
    cfg0 = run_config(runs[0])
    seed = cfg0.run.seed if seed is None else seed
    by_model, vae, probs = {}, None, None
    for label, r, (model, conditioner, schedule, state) in zip(labels, runs, loaded):
        cfg = run_config(r)
        opts = _options(cfg, sampler, steps, eta, guidance, strength=strength)
        _check_guidance(opts.guidance, state, r)
        device = next(model.parameters()).device
        # One chunk size for all runs: chunking decides which noise each root sample gets.
        result = DiffusionSampler(model, conditioner, schedule, opts, device, cfg0.diffusion.sample_batch_size).run(
            "sample_all_leaves", n, seed)
        by_model[label] = result["images"]
        vae, probs = (result["vae"], result["leaf_probs"]) if vae is None else (vae, probs)
        print(f"{label}: {n} x {conditioner.n_leaves} images with {opts.tag(cfg.diffusion.n_timesteps)} "
              f"({float(result['images_per_s']):.1f} img/s)")
    out = Path(out) if out else run_folder(runs[0]) / "figures" / "compare_ddpm.png"
    leaves = loaded[0][1].leaves
    path = compare_figure(vae, by_model, probs, leaves, out, n_show=n,
                          title="same root samples and noise: " + " / ".join(labels))
    np.savez_compressed(out.with_suffix(".npz"), vae=vae, leaf_probs=probs, leaves=np.array(leaves),
                        labels=np.array(labels), runs=np.array([str(r) for r in runs]),
                        **{f"images_{i}": v for i, v in enumerate(by_model.values())})
    return path
