"""Arguments shared by the ray_jobs entry points (defined in `structgen.launch.job_args`)."""
from __future__ import annotations

import sys
from pathlib import Path

# `python ray_jobs/X.py` and `ray job submit --working-dir . -- python ray_jobs/X.py` both run
# from a copy of the repository: make its package importable without installing it there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structgen.launch.job_args import job_parser, job_spec, run_training_job  # noqa: E402

__all__ = ["job_parser", "job_spec", "run_training_job"]
