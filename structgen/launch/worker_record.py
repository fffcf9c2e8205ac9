"""Where each rank of a distributed run ran: one line per rank and start in `<run>/workers.jsonl`.

On a cluster the questions after a slow or failed job are which host each rank was on and
whether a restarted worker group moved; Ray adds its node id, the unit it places and loses.
Every rank appends its own line (one short write with O_APPEND, so ranks on one file system
do not interleave), and a restart appends again, so the file reads as the job's placement history.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

WORKERS_FILE = "workers.jsonl"


def record_worker(run_dir: Path, rank: int, world_size: int, *, node_id: str | None = None,
                  restored: bool = False) -> None:
    """Append this process's line: rank, world size, host, pid, Ray node id (when under Ray),
    and whether it started from a restored checkpoint."""
    line = {"time": time.time(), "rank": rank, "world_size": world_size, "host": socket.gethostname(),
            "pid": os.getpid(), "node_id": node_id, "restored": restored}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / WORKERS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def read_workers(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / WORKERS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
