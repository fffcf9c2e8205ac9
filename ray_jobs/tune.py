"""Ray Tune sweep over tree depth and training hyperparameters.

    python ray_jobs/tune.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --name sweep1
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/tune.py --config configs/digits.yml --sweep configs/sweeps/tree_small.yml --name sweep1

Re-running the same command resumes an interrupted sweep.
"""
import sys

import _args  # noqa: F401  (puts the repository on sys.path)

from structgen.launch.tune_main import main

if __name__ == "__main__":
    sys.exit(main())
