"""Grow a CNN-TreeVAE with DDP on Ray Train.

    python ray_jobs/train_treevae.py --config configs/digits.yml --name demo --num-workers 2
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/train_treevae.py --config configs/digits.yml --name demo --num-workers 2
"""
import sys

import _args  # noqa: F401  (puts the repository on sys.path)


def main(argv=None) -> int:
    args = _args.job_parser(__doc__.split("\n")[1].strip()).parse_args(argv)
    return _args.run_training_job(args, "tree", prog="train_treevae")


if __name__ == "__main__":
    sys.exit(main())
