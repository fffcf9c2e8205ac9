"""Hosts and ports. What every process of one SLURM job can work out alone, and all agree on:
the job's hosts and a port derived from its id (the DDP rendezvous, the Ray cluster a job
starts); and a free port on loopback for a process that starts a service of its own."""
from __future__ import annotations

import socket
import subprocess


def job_port(job_id: str, base: int, span: int) -> int:
    """A stable port in [base, base + span) per job: every task computes the same one, and jobs
    sharing a node (array tasks, a requeued job) differ with high probability."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return base + int(digits) % span


def slurm_hosts(nodelist: str) -> list[str]:
    """The hosts of a SLURM node list ("node[03-05,7]" -> node03 node04 node05 node7), via scontrol."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                             text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"cannot expand the SLURM node list {nodelist!r} with `scontrol show hostnames`: "
                           f"{err}") from None
    if not out:
        raise RuntimeError(f"`scontrol show hostnames {nodelist}` printed no host")
    return out


def free_loopback_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a port the system picks."""
    for port in ((preferred,) if preferred else ()) + (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")
