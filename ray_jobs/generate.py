"""Generate images from a trained run on a Ray cluster (see structgen/launch/ray_generate.py).

    python ray_jobs/generate.py --run runs/digits/demo --mode vae_samples --n 64 --num-workers 2
    python ray_jobs/generate.py --run runs/digits/ddpm1 --mode sample_all_leaves --n 8
"""
import sys

import _args  # noqa: F401  (puts the repository on sys.path)

from structgen.launch.ray_generate import main

if __name__ == "__main__":
    sys.exit(main())
