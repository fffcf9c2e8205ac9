"""The training stages in one table. The CLI (one process, or several under torchrun), Ray Train,
Ray Tune and SLURM all dispatch through it, so adding a stage is one entry here (its API function, and its Tune
trial if sweeps should reach it), not an edit in every launcher.

Every stage runs with one signature, whoever launches it:

    run_dir, report = STAGES[name].run(cfg, ctx=ctx, run_dir=run_dir, resume_checkpoint=ckpt_or_None)

``report`` is the stage's evaluation report (the TreeVAE's) or None. What a stage needs beyond
the config comes from the config too (the DDPM's TreeVAE is `diffusion.vae_run`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from structgen.errors import ConfigError


def _train_tree(cfg, *, ctx, run_dir, resume_checkpoint, evaluate: bool = True):
    from structgen.api import train_tree

    return train_tree(cfg, ctx=ctx, run_dir=run_dir, resume_checkpoint=resume_checkpoint, evaluate=evaluate)


def _train_ddpm(cfg, *, ctx, run_dir, resume_checkpoint, evaluate: bool = True):
    from structgen.ddpm_api import train_ddpm

    return train_ddpm(cfg, ctx=ctx, run_dir=run_dir, resume_checkpoint=resume_checkpoint), None


def _tree_progress(state: dict) -> dict:
    return {"stage": state["growth"]["stage"], "epochs_done": state["growth"]["epochs_done"]}


def _ddpm_progress(state: dict) -> dict:
    return {"step": state["step"], "epoch": state["epoch"]}


@dataclass(frozen=True)
class Stage:
    name: str                  # as `--stage`, a sweep file's `stage:` and a Ray job spell it; also the run
                               # kind `--resume` without a folder looks among (runs.latest_run_dir)
    command: str               # the structgen subcommand that trains it alone (train-tree, train-ddpm)
    train: object              # (cfg, *, ctx, run_dir, resume_checkpoint, evaluate) -> (run_dir, report | None)
    checkpoint_metrics: object  # checkpoint state -> where the run stands, for Ray's report of that checkpoint
    trial: str | None = None   # its Ray Tune trial function, "module:function" (tune_sweep imports it)
    sweep_metrics: tuple = ()  # what its trials report, so what a sweep file may name as its metric
    final_metrics: tuple = ()  # those only a trial's last report carries (they need the finished run)
    needs_vae: bool = False    # conditions on a trained TreeVAE (diffusion.vae_run)

    def run(self, cfg, *, ctx=None, run_dir: Path | None = None, resume_checkpoint: Path | None = None,
            evaluate: bool = True):
        return self.train(cfg, ctx=ctx, run_dir=run_dir, resume_checkpoint=resume_checkpoint, evaluate=evaluate)

    def check(self, cfg, where: str) -> None:
        """Refuse, before anything starts, a config this stage cannot run."""
        if self.needs_vae and not cfg.diffusion.vae_run:
            raise ConfigError(f"{where}: the {self.name} stage needs the TreeVAE run to condition on: set "
                              f"diffusion.vae_run=RUN_DIR (the commands' --vae RUN_DIR)")


STAGES = {stage.name: stage for stage in (
    Stage("tree", "train-tree", _train_tree, _tree_progress, "structgen.launch.tune_trials:tree_trial",
          ("elbo", "loss", "nmi", "acc", "ari", "leaf_purity", "dendrogram_purity"),
          final_metrics=("nmi", "acc", "ari", "leaf_purity", "dendrogram_purity")),
    Stage("ddpm", "train-ddpm", _train_ddpm, _ddpm_progress, "structgen.launch.tune_trials:ddpm_trial",
          ("loss", "generation_purity", "cfd", "agreement", "purity_cfd_score"),
          final_metrics=("generation_purity", "cfd", "agreement", "purity_cfd_score"), needs_vae=True),
)}


def get_stage(name: str, where: str = "stage") -> Stage:
    if name not in STAGES:
        raise ConfigError(f"{where}: unknown stage {name!r}; expected one of {', '.join(STAGES)}")
    return STAGES[name]
