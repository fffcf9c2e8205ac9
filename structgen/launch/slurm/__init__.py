"""structgen on SLURM through submitit: one job per stage, a job array per sweep, or a Ray
cluster inside one allocation; self-requeue on preemption and time limits; status and logs.

    sub = plan_submission("tree", "configs/digits.yml", ["run.seed=1"], flags={"partition": "gpu"})
    print(sub.describe())              # what --dry-run prints
    jobs = sub.submit()                # submitit Jobs; job_result(jobs[0]) -> {"run_dir": ..., ...}

Modules: `resources` (the request and the executor), `stage_job` (a stage as a requeue-safe
job), `ray_tune_job` (a Ray cluster inside one allocation), `submit` (plan and submit),
`status` (sacct/squeue and logs).
"""
from structgen.launch.slurm.ray_tune_job import RayTuneJob, ray_port_for_job
from structgen.launch.slurm.resources import (ENV_KEYS, ENV_PREFIX, Resources, build_executor, executor_parameters,
                                              log_folder, resolve_resources)
from structgen.launch.slurm.stage_job import GENERATE_MODES, STAGES, StageJob, job_id, restart_count
from structgen.launch.slurm.status import job_logs, job_result, job_status, log_files
from structgen.launch.slurm.submit import Submission, plan_submission

__all__ = ["ENV_KEYS", "ENV_PREFIX", "GENERATE_MODES", "STAGES", "RayTuneJob", "Resources", "StageJob", "Submission",
           "build_executor", "executor_parameters", "job_id", "job_logs", "job_result", "job_status", "log_files",
           "log_folder", "plan_submission", "ray_port_for_job", "resolve_resources", "restart_count"]
