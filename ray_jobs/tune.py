"""Ray Tune sweep over tree depth and training hyperparameters.

    python ray_jobs/tune.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --name sweep1
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/tune.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --name sweep1

Re-running the same command resumes an interrupted sweep.
"""
import sys
from pathlib import Path

import _args  # noqa: F401  (puts the repository on sys.path)


def main(argv=None) -> int:
    parser = _args.job_parser(__doc__.split("\n")[1].strip())
    parser.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/*.yml)")
    args = parser.parse_args(argv)
    from structgen.cli import bad_input_errors
    from structgen.config import load_config
    from structgen.launch.ray_cluster import init_ray
    from structgen.sweeps import load_sweep

    try:
        cfg = load_config(args.config, args.overrides)
        sweep = load_sweep(args.sweep)                    # every key validated before any trial starts
        name = args.name or Path(args.sweep).stem
        storage = args.storage_path or cfg.ray.storage_path or str(Path(cfg.run.runs_dir).resolve() / "tune")
        init_ray(args.address)
        from structgen.launch.tune_sweep import run_sweep, summarise
        experiment, results = run_sweep(cfg, sweep, name, storage, cpus_per_trial=args.cpus_per_worker or 1)
        summarise(cfg, sweep, experiment, results)
    except bad_input_errors() as err:
        print(f"tune: error: {err}", file=sys.stderr)
        return 2
    print(f"experiment: {experiment}  (tensorboard --logdir {experiment} --host 127.0.0.1)")
    return 0 if not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
