"""Arguments shared by the ray_jobs entry points."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `python ray_jobs/X.py` and `ray job submit --working-dir . -- python ray_jobs/X.py` both run
# from a copy of the repository: make its package importable without installing it there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", "-c", help="YAML config (configs/*.yml)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (default ray.num_workers)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=int, help="CPUs per worker (default ray.cpus_per_worker)")
    p.add_argument("--storage-path", help="absolute folder for Ray Train results (default <runs_dir>/ray)")
    p.add_argument("--name", help="run name: the run folder runs/<dataset>/<name> and the Ray run")
    p.add_argument("--max-failures", type=int, help="worker-group restarts from the latest checkpoint")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local one)")
    return p


def job_spec(args, cfg):
    from structgen.launch.ray_train import JobSpec

    r = cfg.ray
    return JobSpec(num_workers=args.num_workers or r.num_workers,
                   use_gpu=r.use_gpu if args.use_gpu is None else args.use_gpu,
                   cpus_per_worker=args.cpus_per_worker or r.cpus_per_worker,
                   storage_path=args.storage_path or r.storage_path,
                   name=args.name or cfg.run.name,
                   max_failures=r.max_failures if args.max_failures is None else args.max_failures)


def run_training_job(args, stage: str, vae_run: str | None = None, prog: str = "ray_jobs") -> int:
    """Load the config, start or join Ray, fit the TorchTrainer for ``stage``; an exit code."""
    from structgen.cli import bad_input_errors
    from structgen.config import load_config
    from structgen.launch.ray_cluster import init_ray
    from structgen.launch.ray_train import run_job

    try:
        cfg = load_config(args.config, args.overrides)
        job = job_spec(args, cfg)
        job.stage, job.vae_run = stage, vae_run
        init_ray(args.address)
        run_dir, result = run_job(cfg, job)
    except bad_input_errors() as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
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
