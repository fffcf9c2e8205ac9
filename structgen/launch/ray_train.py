"""TreeVAE growth and DDPM training as Ray Train `TorchTrainer` jobs (DDP across workers).

The worker function builds a `Context` from Ray's train context and calls the same
`structgen.api.train_tree` / `structgen.ddpm_api.train_ddpm` the single-process commands
call. Checkpoints are the run folder's
`checkpoints/last.pt`, handed to `ray.train.report` at every epoch and phase boundary, so a
restarted worker group (`max_failures`) resumes from the latest one; re-running with the same
`--name` resumes a stopped run.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from structgen.config import Config, ConfigError, apply_overrides, config_from_dict, config_to_dict
from structgen.launch.job_args import absolute_paths
from structgen.launch.worker_record import record_worker
from structgen.run_lock import OWNER_ENV
from structgen.runs import LAST_CHECKPOINT, check_run_name, final_checkpoint, last_checkpoint
from structgen.runtime.context import Context
from structgen.stages import Stage, get_stage


@dataclass
class JobSpec:
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    storage_path: str | None = None
    name: str | None = None
    max_failures: int = 0
    placement_strategy: str = "PACK"  # ray.placement_strategy
    stage: str = "tree"              # tree | ddpm
    vae_run: str | None = None       # ddpm: the TreeVAE run to condition on
    env: dict | None = None          # extra environment variables for the workers


# A run folder's checkpoint file in and out of Ray: one file, `LAST_CHECKPOINT`, in a Ray checkpoint
# directory. Ray Train workers (here) and Ray Tune trials (tune_trials) report and restore this way.

def report_file(report: Callable, checkpoint_type, metrics: dict, path: Path | None) -> None:
    """``report(metrics, checkpoint=...)`` with a copy of the checkpoint file at ``path`` (Ray
    moves the directory into its storage); without a file, the metrics alone."""
    if path is None:
        report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / LAST_CHECKPOINT)
        report(metrics, checkpoint=checkpoint_type.from_directory(tmp))


def restore_file(checkpoint, dest: Path) -> Path | None:
    """Copy the checkpoint file out of a Ray checkpoint (None: nothing to restore) to ``dest``."""
    if checkpoint is None:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / LAST_CHECKPOINT, dest)
    return dest


def ray_context(run_dir: Path, stage: Stage) -> Context:
    import ray.train
    import ray.train.torch

    tctx = ray.train.get_context()
    rank, world = tctx.get_world_rank(), tctx.get_world_size()

    def report(state: dict, path: Path | None) -> None:
        metrics = {**stage.checkpoint_metrics(state), "run_dir": str(run_dir)}
        report_file(ray.train.report, ray.train.Checkpoint, metrics, path)

    return Context(run_dir=run_dir, device=ray.train.torch.get_device(), rank=rank, world_size=world,
                   on_checkpoint=report)


def stage_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train

    cfg = config_from_dict(loop_config["config"], source="ray train_loop_config")
    torch.set_num_threads(max(1, loop_config.get("threads", 1)))
    run_dir = Path(loop_config["run_dir"])
    # A restarted worker group is this fit again: it may take over the run folder's lock (run_lock).
    os.environ[OWNER_ENV] = loop_config["owner"]
    stage = get_stage(loop_config["stage"])
    ctx = ray_context(run_dir, stage)
    # A restarted worker group, or a re-run of --name. The copy Ray restores lives only as long
    # as this worker's stage (it was left in /tmp after every restart before).
    with contextlib.ExitStack() as cleanup:
        resume_from, checkpoint = None, ray.train.get_checkpoint()
        if checkpoint is not None:
            restored = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="structgen-ckpt-"))
            resume_from = restore_file(checkpoint, Path(restored) / LAST_CHECKPOINT)
        record_worker(run_dir, ctx.rank, ctx.world_size, node_id=ray.get_runtime_context().get_node_id(),
                      restored=resume_from is not None)
        if resume_from is None and loop_config.get("resume_file"):
            resume_from = Path(loop_config["resume_file"])
        stage.run(cfg, ctx=ctx, run_dir=run_dir, resume_checkpoint=resume_from,
                  evaluate=loop_config.get("evaluate", True))


def run_job(cfg: Config, job: JobSpec, evaluate: bool = True):
    """Fit the TorchTrainer for ``job.stage``; returns (run_dir, ray Result)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    name = check_run_name(job.name or cfg.run.name, "--name")
    if not name:
        raise ConfigError("a Ray job needs --name (or run.name): it names the run folder and the Ray run")
    run_dir = (Path(cfg.run.runs_dir) / cfg.data.dataset / name).resolve()
    storage = Path(job.storage_path or cfg.ray.storage_path or Path(cfg.run.runs_dir) / "ray").resolve()
    last = last_checkpoint(run_dir)
    finished = final_checkpoint(run_dir).exists() and job.stage == "tree"
    if finished:
        from structgen.runs import RunError
        raise RunError(f"{run_dir} is a finished run; choose another --name (nothing was overwritten)")
    stage = get_stage(job.stage, "JobSpec.stage")
    if job.vae_run:
        cfg = apply_overrides(cfg, {"diffusion.vae_run": job.vae_run})
    if not last.exists():
        stage.check(cfg, f"Ray job {name}")
    cfg = apply_overrides(cfg, absolute_paths(cfg))    # workers may start in another folder than the driver
    loop_config = {"config": config_to_dict(cfg), "run_dir": str(run_dir), "evaluate": evaluate,
                   "stage": job.stage,
                   "threads": job.cpus_per_worker, "resume_file": str(last) if last.exists() else None,
                   "owner": f"ray-fit:{uuid.uuid4().hex}"}
    trainer = TorchTrainer(
        stage_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu,
                                     resources_per_worker={"CPU": job.cpus_per_worker},
                                     placement_strategy=job.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             worker_runtime_env={"env_vars": job.env} if job.env else None,
                             failure_config=FailureConfig(max_failures=job.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return run_dir, trainer.fit()
