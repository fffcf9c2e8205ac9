"""Train the Diffuse-TreeVAE DDPM with DDP on Ray Train.

    python ray_jobs/train_ddpm.py --config configs/digits.yml --vae runs/digits/demo --name ddpm1 --num-workers 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/train_ddpm.py --config configs/digits.yml --vae runs/digits/demo --name ddpm1 --num-workers 2
"""
import sys

import _args  # noqa: F401  (puts the repository on sys.path)


def main(argv=None) -> int:
    parser = _args.job_parser(__doc__.split("\n")[1].strip())
    parser.add_argument("--vae", help="TreeVAE run folder to condition on (default diffusion.vae_run)")
    args = parser.parse_args(argv)
    from structgen.cli import bad_input_errors
    from structgen.config import load_config
    from structgen.launch.ray_cluster import init_ray
    from structgen.launch.ray_train import run_job

    try:
        cfg = load_config(args.config, args.overrides)
        job = _args.job_spec(args, cfg)
        job.stage, job.vae_run = "ddpm", args.vae
        init_ray(args.address)
        run_dir, result = run_job(cfg, job)
    except bad_input_errors() as err:
        print(f"train_ddpm: error: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    print(f"ray result: {result.path}  error: {result.error}")
    return 0 if result.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
