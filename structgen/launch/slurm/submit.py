"""Plan a submission (validate config, sweep and every trial; describe the jobs) and submit it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from structgen.config import ConfigError, load_config
from structgen.launch.job_args import absolute_paths
from structgen.launch.slurm.ray_tune_job import RayTuneJob
from structgen.launch.slurm.resources import build_executor, executor_parameters, log_folder, resolve_resources
from structgen.launch.slurm.stage_job import GENERATE_MODES, STAGES, StageJob
from structgen.runs import check_run_name, checkpoint_of


@dataclass
class Submission:
    """Everything that would be submitted; `describe()` is the dry run, `submit()` does it."""
    local: bool
    folder: str
    parameters: dict
    jobs: list
    max_timeouts: int = 3
    trials: list[dict] = field(default_factory=list)
    search_space: dict = field(default_factory=dict)      # --ray: what Tune draws its trials from

    def describe(self) -> str:
        kind = "submitit local executor" if self.local else "SLURM (submitit)"
        shape = f"job array of {len(self.jobs)} tasks" if len(self.jobs) > 1 else "one job"
        lines = [f"would submit {shape} to {kind}", f"log folder: {self.folder}", "executor parameters:"]
        lines += [f"  {k} = {v!r}" for k, v in sorted(self.parameters.items())]
        lines += [f"task {i}: {job.describe()}" for i, job in enumerate(self.jobs)]
        if self.trials:
            lines.append(f"trials ({len(self.trials)}; trial i runs as array task i):")
            lines += [f"  trial {i}: " + ", ".join(f"{k}={v!r}" for k, v in trial.items())
                      for i, trial in enumerate(self.trials)]
        if self.search_space:
            lines.append("trials: drawn by Ray Tune from")
            lines += [f"  {k}: {v}" for k, v in self.search_space.items()]
        return "\n".join(lines)

    def submit(self) -> list:
        executor = build_executor(self.folder, self.parameters, local=self.local, max_timeouts=self.max_timeouts)
        if len(self.jobs) == 1:
            return [executor.submit(self.jobs[0])]
        with executor.batch():                  # one sbatch --array
            jobs = [executor.submit(job) for job in self.jobs]
        return jobs


def plan_submission(stage: str | None, config: str | None, overrides: list[str] | None = None, *,
                    sweep: str | None = None, ray: bool = False, local: bool = False, name: str | None = None,
                    resume: bool = False, evaluate: bool = True, vae: str | None = None, run: str | None = None,
                    mode: str = "vae_samples", n: int | None = None, flags: dict | None = None,
                    env=None) -> Submission:
    """Validate everything (config, sweep, every trial) and describe the jobs; submits nothing."""
    from structgen.sweeps import expand_trials, load_sweep, trial_overrides

    overrides = list(overrides or [])
    config = str(Path(config).absolute()) if config else None
    cfg = load_config(config, overrides)
    res = resolve_resources(cfg.slurm, flags, env)
    folder = log_folder(res)
    name = check_run_name(name or cfg.run.name, "--name")
    base = overrides + [f"{key}={path}" for key, path in absolute_paths(cfg).items()]    # a job may start elsewhere
    if ray and not sweep:
        raise ConfigError("--ray runs a Ray Tune sweep: it needs --sweep SWEEP.yml")
    if not sweep:
        if stage not in STAGES:
            raise ConfigError(f"--stage {stage!r}: expected one of {', '.join(STAGES)}")
        if stage == "generate" and mode not in GENERATE_MODES:
            raise ConfigError(f"--mode {mode!r}: expected one of {', '.join(GENERATE_MODES)}")
        if stage == "generate":
            if not run and not name:
                raise ConfigError("--stage generate needs --run RUN_DIR (or --name / run.name of a run under runs_dir)")
            run = run or str(Path(cfg.run.runs_dir) / cfg.data.dataset / name)
        for given in (run if stage == "generate" else None, vae if stage == "ddpm" else None):
            if given:
                checkpoint_of(given)           # a missing run fails here, not in the queue
        # generate reads the run's own config.yml; the user's --set go there, the pinned folders do not
        job = StageJob(stage, config, overrides if stage == "generate" else base, name=name, resume=resume,
                       evaluate=evaluate, vae=vae, run=str(Path(run).absolute()) if run else None, mode=mode, n=n)
        if stage == "generate":        # one process, one node
            res = dataclasses.replace(res, nodes=1, gpus_per_node=min(res.gpus_per_node, 1))
        params = executor_parameters(res, name=f"structgen-{stage}", local=local)
        return Submission(local, folder, params, [job], res.max_timeouts)
    spec = load_sweep(sweep, cfg)
    if stage and stage != spec.stage:
        raise ConfigError(f"--stage {stage} but the sweep {sweep} is a {spec.stage} sweep")
    trials = expand_trials(spec, cfg.run.seed)
    if ray:
        job = RayTuneJob(config, base, str(Path(sweep).absolute()), name, res.cpus_per_task, res.gpus_per_node)
        params = executor_parameters(res, name="structgen-tune", local=local, single_process=True)
        sub = Submission(local, folder, params, [job], res.max_timeouts)
        sub.search_space = {k: f"{d.kind} {d.values}" for k, d in spec.params.items()}
        sub.search_space["num_samples"] = spec.num_samples
        return sub
    jobs = []
    for i, trial in enumerate(trials):
        sets = base + trial_overrides(trial)
        load_config(config, sets)                # a bad trial fails here, not in the queue
        jobs.append(StageJob(spec.stage, config, sets, name=f"{name}-trial{i:02d}" if name else None,
                             resume=resume, evaluate=evaluate, vae=vae))
    params = executor_parameters(res, name=f"structgen-{spec.stage}-sweep", local=local,
                                 array_parallelism=spec.max_concurrent)
    return Submission(local, folder, params, jobs, res.max_timeouts, trials)
