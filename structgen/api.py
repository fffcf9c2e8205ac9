"""The Python API behind the CLI: train, evaluate and generate from a config or a run folder.

    from structgen.api import train_tree
    from structgen.config import load_config
    run_dir, report = train_tree(load_config("configs/digits.yml"))
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from structgen.config import Config, config_to_dict, load_config, save_config
from structgen.runs import checkpoint_of, latest_run_dir, new_run_dir, run_dir_of
from structgen.train.checkpoint import CheckpointError, load_checkpoint

# Keys that may differ between the run being resumed and the command resuming it.
RESUME_FREE = ("run.name", "run.device", "run.threads", "run.progress", "run.runs_dir", "data.data_dir",
               "evaluation.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict, cfg: Config, where: Path) -> None:
    now, then = _flat(config_to_dict(cfg)), _flat(saved)
    diff = [k for k in sorted(set(now) | set(then))
            if now.get(k) != then.get(k) and not k.startswith(RESUME_FREE)]
    if diff:
        detail = "; ".join(f"{k}: checkpoint {then.get(k)!r} vs now {now.get(k)!r}" for k in diff[:6])
        raise CheckpointError(f"{where}: cannot resume, the config differs from the checkpoint's in {detail}. "
                              f"Resume with the run's own config ({where.parent.parent / 'config.yml'}) or start a new run.")


def _setup_torch(cfg: Config) -> None:
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)


def train_tree(cfg: Config, *, resume: bool | str | Path = False, ctx=None, evaluate: bool = True,
               run_dir: str | Path | None = None, resume_checkpoint: str | Path | None = None):
    """Grow, prune and finetune a CNN-TreeVAE; returns (run_dir, evaluation report or None).

    ``resume``: True continues the latest run (or run.name), a path continues that run folder.
    Launchers that manage their own checkpoints (Ray) pass ``run_dir`` and, after a restart,
    ``resume_checkpoint``. Only rank 0 of ``ctx`` writes files.
    """
    from structgen.train.context import Context, resolve_device
    from structgen.train.data import load_run_data
    from structgen.train.growth import TreeTrainer
    from structgen.train.metrics_log import MetricsLog
    from structgen.train.progress import Progress

    _setup_torch(cfg)
    data = load_run_data(cfg)                       # data problems surface before any folder is made
    is_main = ctx is None or ctx.is_main
    saved = None
    if resume_checkpoint is not None:
        saved = load_checkpoint(Path(resume_checkpoint))
        run_dir = Path(run_dir) if run_dir is not None else run_dir_of(Path(resume_checkpoint))
        check_resumable(saved["config"], cfg, Path(resume_checkpoint))
    elif resume:
        run_dir = latest_run_dir(cfg) if resume is True else Path(resume)
        ckpt_path = run_dir / "checkpoints" / "last.pt"
        saved = load_checkpoint(ckpt_path)
        check_resumable(saved["config"], cfg, ckpt_path)
    elif run_dir is not None:
        run_dir = Path(run_dir)
    else:
        run_dir = new_run_dir(cfg)
    ctx = ctx or Context(run_dir=run_dir, device=resolve_device(cfg.run.device))
    ctx.run_dir = run_dir
    log = MetricsLog(run_dir, enabled=is_main)
    progress = Progress(cfg.run.progress, enabled=is_main)
    if saved is not None:
        log.truncate(saved["metrics_lines"])
        growth = saved["growth"]
        progress.line(f"resuming {run_dir} at stage {growth['stage']}"
                      + (f", phase {growth['phase']['name']} epoch {growth['phase']['epoch']}" if growth["phase"] else ""))
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yml", header=f"resolved config of run {run_dir}\nre-run: structgen "
                    f"train-tree --config {run_dir / 'config.yml'}")
        progress.line(f"run folder: {run_dir}")
    trainer = TreeTrainer(cfg, ctx, data, log, progress, resume=saved)
    model = trainer.run()
    if is_main:
        shutil.copyfile(trainer.checkpoint_path, run_dir / "checkpoints" / "final.pt")
    report = None
    if evaluate:
        report = evaluate_run(run_dir, cfg=cfg, model=model, data=data, ctx=ctx, log=log)
    log.close()
    return run_dir, report


def load_model(path: str | Path, device="cpu"):
    """Rebuild a TreeVAE from a run folder or checkpoint: topology first, then weights (strict)."""
    from structgen.models.treevae import ModelSpec, TreeVAE
    from structgen.tree import Tree

    ckpt_path = checkpoint_of(path)
    state = load_checkpoint(ckpt_path)
    try:
        spec = ModelSpec(**{**state["spec"], "image_shape": tuple(state["spec"]["image_shape"])})
        model = TreeVAE(spec, Tree.from_dict(state["tree"]))
        model.load_state_dict(state["model"], strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{ckpt_path}: incompatible checkpoint: {err}") from None
    return model.to(device).eval(), state


def _run_config(run_dir: Path, overrides=()) -> Config:
    cfg_path = run_dir / "config.yml"
    if not cfg_path.exists():
        raise CheckpointError(f"{run_dir}: no config.yml in this run folder")
    return load_config(cfg_path, overrides)


def evaluate_run(path, *, overrides=(), cfg=None, model=None, data=None, ctx=None, log=None):
    """Evaluate, print the metric table, append to metrics.jsonl, draw the figures."""
    from structgen.eval.evaluate import evaluate_model, format_report
    from structgen.eval.figures import write_generations, write_tree_figure
    from structgen.train.context import Context, resolve_device
    from structgen.train.data import load_run_data
    from structgen.train.metrics_log import MetricsLog

    run_dir = Path(path) if Path(path).is_dir() else run_dir_of(Path(path))
    if model is None:
        checkpoint_of(path)               # a missing checkpoint is the first thing to report
    cfg = cfg or _run_config(run_dir, overrides)
    _setup_torch(cfg)
    if model is None:
        model, _ = load_model(path, resolve_device(cfg.run.device))
    data = data or load_run_data(cfg)
    ctx = ctx or Context(run_dir=run_dir, device=next(model.parameters()).device)
    result, test_probs = evaluate_model(model, data, cfg, ctx)
    if not ctx.is_main:
        return result
    own_log = log is None
    log = log or MetricsLog(run_dir)
    log.write("evaluation", **result)
    print(format_report(result))
    figures = run_dir / "figures"
    pred = test_probs.argmax(1).numpy()
    tree_png = write_tree_figure(model, figures / "tree.png", data.test, pred, result["leaf_mass"], data.num_classes,
                                 data.train.class_names, cfg.evaluation.samples_per_leaf, cfg.run.seed,
                                 title=f"{cfg.data.dataset}: ACC {result['acc']:.3f}  NMI {result['nmi']:.3f}")
    written = write_generations(model, "vae_recons", figures, 16, cfg.run.seed, test=data.test, device=ctx.device)
    print(f"figures: {tree_png}  and  {written[-2]}")
    if own_log:
        log.close()
    return result


def generate(path, mode: str, n: int | None = None, overrides=()):
    """Write per-leaf PNG grids and .npz arrays for ``vae_samples`` or ``vae_recons``."""
    from structgen.eval.figures import write_generations
    from structgen.train.context import resolve_device
    from structgen.train.data import load_run_data

    run_dir = Path(path) if Path(path).is_dir() else run_dir_of(Path(path))
    checkpoint_of(path)
    cfg = _run_config(run_dir, overrides)
    _setup_torch(cfg)
    device = resolve_device(cfg.run.device)
    model, _ = load_model(path, device)
    test = load_run_data(cfg).test if mode == "vae_recons" else None
    return write_generations(model, mode, run_dir / "samples", n or cfg.evaluation.n_generate, cfg.run.seed,
                             test=test, device=device)
