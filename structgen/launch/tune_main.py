"""Ray Tune sweep over tree depth and training hyperparameters.

    python ray_jobs/tune.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --name sweep1
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/tune.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --name sweep1

Re-running the same command resumes an interrupted sweep. `python -m structgen.launch.tune_main`
takes the same arguments and needs no checkout (a SLURM allocation runs it that way).
"""
import sys
from pathlib import Path

from structgen.launch.job_args import bad_input, job_config, job_parser


def main(argv=None) -> int:
    parser = job_parser(__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/*.yml)")
    args = parser.parse_args(argv)
    from structgen.errors import BAD_INPUT
    from structgen.launch.ray_cluster import init_ray
    from structgen.sweeps import load_sweep

    try:
        cfg = job_config(args)
        sweep = load_sweep(args.sweep, cfg)               # every value validated before any trial starts
        name = args.name or Path(args.sweep).stem
        storage = cfg.ray.storage_path or str(Path(cfg.run.runs_dir).resolve() / "tune")
        init_ray(cfg.ray.address)
        from structgen.launch.tune_sweep import run_sweep, summarise
        experiment, results = run_sweep(cfg, sweep, name, storage, cpus_per_trial=cfg.ray.cpus_per_worker)
        summarise(cfg, sweep, experiment, results)
    except BAD_INPUT as err:
        return bad_input("tune", err)
    print(f"experiment: {experiment}  (tensorboard --logdir {experiment} --host 127.0.0.1)")
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
