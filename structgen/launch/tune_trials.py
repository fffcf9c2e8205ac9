"""What one Ray Tune trial runs: the ordinary training on its resolved config, reporting after
every epoch and phase boundary (with a checkpoint, so ASHA can stop it and an interrupted sweep
can resume it) and once more with the final evaluation."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from structgen.config import apply_overrides, config_from_dict
from structgen.launch.ray_train import report_file, restore_file
from structgen.run_lock import holds_a_run
from structgen.runtime.context import Context, resolve_device

HELD_OUT = 1000          # test images scored for the per-epoch held-out ELBO


def held_out_elbo(model, images: np.ndarray, batch_size: int, device) -> float:
    from structgen.eval.evaluate import elbo_and_ll

    was_training = model.training
    torch_state = torch.get_rng_state()
    torch.manual_seed(0)                     # the same noise for every report: comparable numbers
    elbo = elbo_and_ll(model, images[:HELD_OUT], batch_size, device)["elbo"]
    torch.set_rng_state(torch_state)         # leave training's random stream untouched
    model.train(was_training)
    return elbo


def reporting_context(run_dir: Path, cfg, epoch_metrics) -> Context:
    """A training Context whose checkpoints become Tune reports: one per completed epoch, with
    ``epoch_metrics(epoch record, checkpoint state)`` (None: not yet) and the checkpoint, so
    ASHA can stop the trial and an interrupted sweep can resume it."""
    from ray import tune

    latest: dict = {}

    def on_epoch_end(record: dict) -> None:
        latest.clear()
        latest.update(record)

    def on_checkpoint(state: dict, path: Path | None) -> None:
        if path is None or not latest:
            return
        metrics = epoch_metrics(latest, state)
        if metrics is None:
            return
        latest.clear()                       # one report per completed epoch
        report_file(tune.report, tune.Checkpoint, metrics, path)

    return Context(run_dir=run_dir, device=resolve_device(cfg.run.device), on_checkpoint=on_checkpoint,
                   on_epoch_end=on_epoch_end)


def start_trial(config: dict):
    """What every trial starts with: (its config, its run folder, the checkpoint to resume from or None).

    The run folder is <experiment>/runs/<trial name>, not Tune's trial working folder: that one is
    new in every Ray session, so a resumed sweep would start the run folder (its metrics.jsonl
    history) afresh and then sync the stub over the stored one. The checkpoint is the one Tune
    restored this trial with (a resumed sweep or trial), copied out."""
    import ray
    from ray import tune

    from structgen.launch.worker_record import record_worker

    base = config_from_dict(config["base"], source="sweep base config")
    cfg = apply_overrides(base, config.get("params", {}), source="trial")
    cfg.run.progress = "plain"
    torch.set_num_threads(max(1, config.get("threads", 1)))
    run_dir = Path(config["runs_root"]) / tune.get_context().get_trial_name()
    resume_from = restore_file(tune.get_checkpoint(), run_dir / "resume.pt")
    if resume_from is None:
        set_aside_unfinished_attempt(run_dir)
    record_worker(run_dir, 0, 1, node_id=ray.get_runtime_context().get_node_id(), restored=resume_from is not None)
    return cfg, run_dir, resume_from


def set_aside_unfinished_attempt(run_dir: Path) -> Path | None:
    """Tune starts a trial over when it was stopped before it stored a checkpoint; what that
    attempt wrote into the trial's run folder (its first metrics) moves aside, not overwritten,
    to ``<trial name>.attempt-<time>``, so the new attempt trains in a fresh folder."""
    if not holds_a_run(run_dir):
        return None
    aside = run_dir.with_name(f"{run_dir.name}.attempt-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    return aside


def tree_trial(config: dict) -> None:
    from ray import tune

    from structgen.api import train_tree
    from structgen.data.run_data import load_run_data

    cfg, run_dir, resume_from = start_trial(config)
    test_images = load_run_data(cfg).test.images

    def epoch_metrics(record: dict, state: dict) -> dict | None:
        model = ctx.model
        if model is None:
            return None
        return {"loss": record["loss"], "phase": record["phase"], "epochs_done": state["growth"]["epochs_done"],
                "n_leaves": len(model.tree.leaves()), "depth": model.tree.max_depth(),
                "elbo": held_out_elbo(model, test_images, cfg.evaluation.batch_size, ctx.device)}

    ctx = reporting_context(run_dir, cfg, epoch_metrics)
    _, report = train_tree(cfg, ctx=ctx, run_dir=run_dir, resume_checkpoint=resume_from, evaluate=True)
    model = ctx.model
    # unlabelled data (a user's folder) has no class metrics; the ELBO objective needs none
    final = {k: report[k] for k in ("nmi", "acc", "ari", "leaf_purity", "dendrogram_purity") if k in report}
    final.update(loss=float("nan"), phase="evaluation", n_leaves=report["n_leaves"], depth=model.tree.max_depth(),
                 elbo=held_out_elbo(model, test_images, cfg.evaluation.batch_size, ctx.device), final=True)
    tune.report(final)


def score_trial(run_dir: Path, cfg, n: int = 100) -> dict:
    """Generation purity, agreement and classifier-Fréchet distance of a DDPM trial's samples, and
    purity_cfd_score = min(purity / the TreeVAE's purity, the TreeVAE's CFD / (2 · CFD)): at least 1
    when the samples are as pure as the TreeVAE's and at most half as far from the test set (issue
    17's target), so maximising it trades neither for the other. Judged by the dataset's
    `--degrade` classifier (runs/classifiers/<dataset>-degrade.pt) when it exists, else by its
    plain one; an empty dict when neither exists (structgen train-classifier)."""
    from structgen.data.run_data import labelled_test_split
    from structgen.ddpm_api import load_ddpm
    from structgen.diffusion.modes import DiffusionSampler, SamplerOptions
    from structgen.diffusion.score import score_generations
    from structgen.scoring.classifier import default_classifier_path, load_classifier

    plain = Path(default_classifier_path(cfg.data.dataset, cfg.run.runs_dir))
    path = next((p for p in (plain.with_name(f"{cfg.data.dataset}-degrade.pt"), plain) if p.exists()), None)
    if path is None:
        return {}
    clf, _ = load_classifier(path, expect_dataset=cfg.data.dataset)
    device = resolve_device(cfg.run.device)
    model, conditioner, schedule, _ = load_ddpm(run_dir, device)
    sampler = DiffusionSampler(model, conditioner, schedule, SamplerOptions.from_config(cfg.diffusion), device,
                               cfg.diffusion.sample_batch_size)
    scores = score_generations(sampler, clf, cfg.data.dataset, cfg.data.data_dir, n=n,
                               per_leaf=max(2, n // conditioner.n_leaves), seed=cfg.run.seed, floor=False,
                               test=labelled_test_split(cfg))
    diffusion, vae = scores["diffusion"], scores["vae"]
    return {"generation_purity": float(diffusion["purity"]), "cfd": float(diffusion["cfd"]),
            "agreement": diffusion["agreement"], "classifier": str(path),
            "purity_cfd_score": float(min(diffusion["purity"] / vae["purity"], vae["cfd"] / (2 * diffusion["cfd"])))}


def ddpm_trial(config: dict) -> None:
    from ray import tune

    from structgen.ddpm_api import train_ddpm

    cfg, run_dir, resume_from = start_trial(config)
    if not cfg.diffusion.vae_run:
        raise ValueError("a ddpm sweep needs diffusion.vae_run: the TreeVAE run every trial conditions on")

    def epoch_metrics(record: dict, state: dict) -> dict:
        return {"loss": record["loss"], "step": state["step"], "epoch": state["epoch"]}

    ctx = reporting_context(run_dir, cfg, epoch_metrics)
    train_ddpm(cfg, cfg.diffusion.vae_run, ctx=ctx, run_dir=run_dir, resume_checkpoint=resume_from)
    from structgen.runtime.metrics_log import read_metrics
    last = [r for r in read_metrics(run_dir) if r["event"] == "ddpm_epoch"][-1]
    tune.report({"loss": last["loss"], "final": True, **score_trial(run_dir, cfg)})
