"""Submit structgen to SLURM through submitit (or run the same through submitit's local executor).

    python slurm/launch.py --config configs/mnist.yml --stage tree --gpus-per-node 4 --partition gpu
    python slurm/launch.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml   # job array
    python slurm/launch.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --ray --nodes 2
    python slurm/launch.py --config configs/digits.yml --stage tree --dry-run
    python slurm/launch.py --status 1234      |      python slurm/launch.py --logs 1234

Partition, account, QOS and log folder: flag > STRUCTGEN_SLURM_* variable > the config's slurm section.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # run from a checkout without installing

# The slurm section's keys this launcher takes as flags (flag > STRUCTGEN_SLURM_* > config).
RESOURCE_FLAGS = ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "partition", "account", "qos",
                  "folder")


def build_parser() -> argparse.ArgumentParser:
    from structgen.config.flags import add_key_flags, add_set_argument
    from structgen.launch import slurm

    p = argparse.ArgumentParser(prog="slurm/launch.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    what = p.add_argument_group("what to run")
    what.add_argument("--config", "-c", help="YAML config (configs/*.yml)")
    add_set_argument(what)
    what.add_argument("--stage", choices=("tree", "ddpm", "generate"), help="default with --sweep: the sweep's stage")
    what.add_argument("--sweep", help="sweep file: one array task per trial (or, with --ray, one Ray Tune run)")
    what.add_argument("--ray", action="store_true",
                      help="run the sweep with Ray Tune on a Ray cluster inside one allocation")
    what.add_argument("--name", help="run folder runs/<dataset>/<name> (default run.name, else slurm-<job id>)")
    what.add_argument("--resume", action="store_true", help="continue the named run from its checkpoints/last.pt")
    what.add_argument("--no-eval", action="store_true", help="tree: skip the final evaluation")
    what.add_argument("--vae", help="ddpm: the TreeVAE run to condition on (default diffusion.vae_run)")
    what.add_argument("--run", help="generate: the run folder (default runs/<dataset>/<name>)")
    what.add_argument("--mode", default="vae_samples", choices=("vae_samples", "vae_recons"),
                      help="generate: what to draw")
    what.add_argument("--n", type=int, help="generate: number of images")
    where = p.add_argument_group(f"resources (a flag > its ${slurm.ENV_PREFIX}* variable > the config's slurm section)")
    add_key_flags(where, "slurm", RESOURCE_FLAGS)
    how = p.add_argument_group("how")
    how.add_argument("--local", action="store_true", help="submitit's local executor instead of SLURM")
    how.add_argument("--dry-run", action="store_true", help="print what would be submitted, submit nothing")
    how.add_argument("--wait", action="store_true", help="wait for the job(s) and print their results")
    how.add_argument("--status", metavar="JOB", help="show a job's state (sacct) and exit")
    how.add_argument("--logs", metavar="JOB", help="show the tail of a job's submitit logs and exit")
    how.add_argument("--lines", type=int, default=40, help="--logs: lines per file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from structgen.config import ConfigError, load_config
    from structgen.errors import BAD_INPUT
    from structgen.launch import slurm

    flags = {k: getattr(args, k) for k in RESOURCE_FLAGS}
    try:
        if args.status:
            print(slurm.job_status(args.status))
            return 0
        if args.logs:
            res = slurm.resolve_resources(load_config(args.config, args.overrides).slurm, flags)
            print(slurm.job_logs(args.logs, slurm.log_folder(res), args.lines))
            return 0
        if not args.sweep and not args.stage:
            raise ConfigError("give --stage tree|ddpm|generate, or --sweep SWEEP.yml")
        sub = slurm.plan_submission(args.stage, args.config, args.overrides, sweep=args.sweep, ray=args.ray,
                                    local=args.local, name=args.name, resume=args.resume, evaluate=not args.no_eval,
                                    vae=args.vae, run=args.run, mode=args.mode, n=args.n, flags=flags)
    except BAD_INPUT as err:
        print(f"slurm/launch.py: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(sub.describe())
        return 0
    jobs = sub.submit()
    for job in jobs:
        print(f"submitted {job.job_id}")
    first = jobs[0].job_id.split("_")[0]
    print(f"logs: {sub.folder}\nstatus: python slurm/launch.py --status {first}\n"
          f"output: python slurm/launch.py --logs {first}")
    if args.wait:
        failed = 0
        for job in jobs:
            try:
                print(f"{job.job_id}: {slurm.job_result(job)}")
            except Exception as err:       # a failed task: report it, still wait for the others
                failed += 1
                print(f"{job.job_id}: failed: {err}", file=sys.stderr)
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
