"""Launchers: how a job reaches its workers (Ray Train, SLURM). Loops never import these."""
