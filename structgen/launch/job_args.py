"""Arguments and the run of a Ray job, shared by the entry points in `ray_jobs/` and by
`python -m structgen.launch.tune_main` (what a SLURM allocation runs, installed or not); and
what every launcher needs: pinned paths, the bad-input exit."""
from __future__ import annotations

import argparse
import sys
from operator import attrgetter
from pathlib import Path

from structgen.config.flags import add_key_flags, add_set_argument, key_flag_overrides


# The ray section's keys a job takes as flags; each overrides the config for this job.
RAY_FLAGS = ("address", "num_workers", "use_gpu", "cpus_per_worker", "storage_path", "max_failures",
             "placement_strategy")
# Every config key naming a file or folder that a launched process opens.
PATH_KEYS = ("run.runs_dir", "data.data_dir", "data.ffcv_dir", "data.path", "diffusion.vae_run")


def absolute_paths(cfg) -> dict[str, str]:
    """The relative PATH_KEYS of ``cfg`` made absolute, as overrides: a Ray worker, Tune trial or
    SLURM job may start in another folder than the command that launched it. Unset (None, empty)
    and already absolute values are left out, so they stay as they are."""
    values = {key: attrgetter(key)(cfg) for key in PATH_KEYS}
    return {key: str(Path(value).expanduser().absolute()) for key, value in values.items()
            if value and not Path(value).is_absolute()}


def bad_input(prog: str, err: Exception) -> int:
    """Report a bad-input error (structgen.errors.BAD_INPUT) as the structgen command does; exit code 2."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", "-c", help="YAML config (configs/*.yml)")
    add_set_argument(p)
    p.add_argument("--name", help="run name: the run folder runs/<dataset>/<name> and the Ray run")
    add_key_flags(p, "ray", RAY_FLAGS)
    return p


def ray_flag_overrides(args) -> list[str]:
    """The ray flags given, as `--set` overrides of their `ray.*` keys."""
    return key_flag_overrides(args, "ray", RAY_FLAGS)


def job_config(args):
    """The config file with --set and the ray flags applied (flag > --set > file), validated."""
    from structgen.config import load_config

    return load_config(args.config, args.overrides + ray_flag_overrides(args))


def job_spec(args, cfg):
    from structgen.launch.ray_train import JobSpec

    r = cfg.ray
    return JobSpec(num_workers=r.num_workers, use_gpu=r.use_gpu, cpus_per_worker=r.cpus_per_worker,
                   storage_path=r.storage_path, name=args.name or cfg.run.name, max_failures=r.max_failures,
                   placement_strategy=r.placement_strategy)


def run_training_job(args, stage: str, vae_run: str | None = None, prog: str = "ray_jobs") -> int:
    """Load the config, start or join Ray, fit the TorchTrainer for ``stage``; an exit code."""
    from structgen.errors import BAD_INPUT
    from structgen.launch.ray_cluster import init_ray
    from structgen.launch.ray_train import run_job

    try:
        cfg = job_config(args)
        job = job_spec(args, cfg)
        job.stage, job.vae_run = stage, vae_run
        init_ray(cfg.ray.address)
        run_dir, result = run_job(cfg, job)
    except BAD_INPUT as err:
        return bad_input(prog, err)
    except Exception as err:
        import ray.train
        if not isinstance(err, ray.train.TrainingFailedError):
            raise
        # The run folder keeps its last checkpoint: the same command with the same --name resumes.
        print(f"{prog}: the job failed ({type(err).__name__}: {str(err).splitlines()[0]}); run the same "
              f"command again with --name {job.name} to resume from its last checkpoint", file=sys.stderr)
        return 1
    print(f"run folder: {run_dir}")
    print(f"ray result: {result.path}  error: {result.error}")
    return 0 if result.error is None else 1
