"""One structgen stage (tree, ddpm, generate) as a submitit job function, requeue-safe.

On USR2 (the time-limit signal, or `scancel --signal=USR2` on preemption) submitit calls
`StageJob.checkpoint()`, which returns the same job with ``resume=True``, and requeues it. The
training has already written <run_dir>/checkpoints/last.pt atomically at the last epoch end, and
the run folder is a pure function of the job (runs/<dataset>/<name or slurm-<job id>>), so the
requeued job finds that checkpoint and continues. A job requeued by SLURM itself (`scontrol
requeue`, node failure) resumes the same way: SLURM_RESTART_COUNT tells it that it ran before.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from structgen.config import apply_overrides, load_config
from structgen.runs import RunError, last_checkpoint
from structgen.stages import STAGES as TRAINING_STAGES, get_stage

STAGES = (*TRAINING_STAGES, "generate")          # the training stages, and generation from a trained TreeVAE
GENERATE_MODES = ("vae_samples", "vae_recons")


def job_id() -> str:
    """This job's id, stable across requeues: "123", "123_4" for an array task, the local pid."""
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:                       # called outside submitit (e.g. by hand in an salloc)
        return os.environ.get("SLURM_JOB_ID") or f"local-{os.getpid()}"


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _use_task_cpus(cfg) -> None:
    """torch's default thread count is the node's core count: too many with several tasks per node."""
    import torch

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cfg.run.threads and cpus:
        torch.set_num_threads(int(cpus))


@dataclass
class StageJob(Checkpointable):
    """One structgen stage as a submitit job function; picklable, requeue-safe."""
    stage: str
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    name: str | None = None                    # run folder name; None = slurm-<job id>
    resume: bool = False
    evaluate: bool = True
    vae: str | None = None                     # ddpm: the TreeVAE run (else diffusion.vae_run)
    run: str | None = None                     # generate: the run folder
    mode: str = "vae_samples"
    n: int | None = None

    def describe(self) -> str:
        sets = " ".join(f"--set {s}" for s in self.overrides)
        if self.stage == "generate":
            return f"structgen generate {self.run} --mode {self.mode}" \
                   + (f" --n {self.n}" if self.n else "") + (f" {sets}" if sets else "")
        notes = [f"run folder <runs_dir>/<dataset>/{self.name or 'slurm-$SLURM_JOB_ID'}", "DDP over the job's tasks"]
        notes += ["resume"] if self.resume else []
        notes += [f"--vae {self.vae}"] if self.vae else []
        return (f"structgen {get_stage(self.stage).command} --config {self.config or '(schema defaults)'} {sets} "
                f"({'; '.join(notes)})")

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """submitit calls this on USR2: requeue the same job, told to resume. The training state
        itself is <run_dir>/checkpoints/last.pt, written atomically at every epoch end."""
        return DelayedSubmission(dataclasses.replace(self, resume=True))

    def __call__(self) -> dict | None:
        from structgen.launch.distributed import process_group

        cfg = load_config(self.config, self.overrides)
        _use_task_cpus(cfg)
        with process_group(cfg.run.device) as ctx:
            if self.stage == "generate":
                return self._generate() if ctx.is_main else None
            return self._train(cfg, ctx)

    def _run_dir(self, cfg, jid: str) -> Path:
        return Path(cfg.run.runs_dir) / cfg.data.dataset / (self.name or f"slurm-{jid}")

    def _should_resume(self, run_dir: Path) -> bool:
        """Rank 0's decision; a fresh named run never overwrites an existing one."""
        last = last_checkpoint(run_dir)
        restarted = self.resume or restart_count() > 0
        if last.exists():
            if restarted or self.name is None:   # slurm-<id> can only hold this job's own checkpoint
                return True
            raise RunError(f"{run_dir} already holds a run (checkpoints/last.pt); submit with --resume to "
                           f"continue it, or choose another --name (nothing was overwritten)")
        if restarted:
            # An earlier attempt died before its first checkpoint: its partial log is not a run.
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return False

    def _train(self, cfg, ctx) -> dict | None:
        from structgen.launch.distributed import decided_on_rank0
        from structgen.launch.worker_record import record_worker

        jid = job_id()
        run_dir = self._run_dir(cfg, jid).absolute()
        resume = decided_on_rank0(ctx, lambda: self._should_resume(run_dir))
        record_worker(run_dir, ctx.rank, ctx.world_size, restored=bool(resume))   # which host ran which rank
        stage = get_stage(self.stage)
        if self.vae:
            cfg = apply_overrides(cfg, {"diffusion.vae_run": self.vae})
        _, report = stage.run(cfg, ctx=ctx, run_dir=run_dir, evaluate=self.evaluate,
                              resume_checkpoint=last_checkpoint(run_dir) if resume else None)
        if not ctx.is_main:
            return None
        return {"stage": self.stage, "run_dir": str(run_dir), "job_id": jid, "resumed": bool(resume),
                "restarts": restart_count(), "world_size": ctx.world_size, "report": report}

    def _generate(self) -> dict:
        from structgen.api import generate

        paths = generate(self.run, self.mode, self.n, self.overrides)
        return {"stage": "generate", "run_dir": self.run, "job_id": job_id(), "paths": [str(p) for p in paths]}
