"""Grow a CNN-TreeVAE with DDP on Ray Train.

    python ray_jobs/train_treevae.py --config configs/digits.yml --name demo --num-workers 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/train_treevae.py --config configs/digits.yml --name demo --num-workers 2
"""
import sys

import _args  # noqa: F401  (puts the repository on sys.path)


def main(argv=None) -> int:
    args = _args.job_parser(__doc__.split("\n")[1].strip()).parse_args(argv)
    from structgen.cli import bad_input_errors
    from structgen.config import load_config
    from structgen.launch.ray_cluster import init_ray
    from structgen.launch.ray_train import run_job

    try:
        cfg = load_config(args.config, args.overrides)
        job = _args.job_spec(args, cfg)
        init_ray(args.address, num_cpus=None)
        run_dir, result = run_job(cfg, job)
    except bad_input_errors() as err:
        print(f"train_treevae: error: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    print(f"ray result: {result.path}  error: {result.error}")
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
