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
    return _args.run_training_job(args, "ddpm", vae_run=args.vae, prog="train_ddpm")


if __name__ == "__main__":
    sys.exit(main())
