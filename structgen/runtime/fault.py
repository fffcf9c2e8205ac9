"""Opt-in fault injection, for testing recovery with a real process death.

Set STRUCTGEN_FAULT_AT="<phase name>:<epoch>:<rank>" and STRUCTGEN_FAULT_MARKER=<file>: the
matching rank kills itself with SIGKILL right after that epoch's checkpoint, once (the marker
file records that it happened); a rank of ``*`` matches every rank. With STRUCTGEN_FAULT_KILL=node,
a rank running under Ray first kills its node's raylet, so the whole node is lost as when a host
goes down; STRUCTGEN_FAULT_NODE=<Ray node id> limits that to the ranks on that node (which rank
lands where is Ray's choice). Inside a round of parallel growth every worker trains its sub-tree
as rank 0 of a world of its own, so there "<sub-tree phase>:<epoch>:0" stops the worker that
trains that sub-tree. Unset, this does nothing.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path


def _ancestor_named(name: str) -> int | None:
    """The nearest ancestor process whose command name is ``name`` (Linux /proc), or None."""
    pid = os.getppid()
    while pid > 1:
        proc = Path("/proc") / str(pid)
        try:
            if (proc / "comm").read_text().strip() == name:
                return pid
            pid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


def maybe_die(phase: str, epoch: int, rank: int) -> None:
    spec = os.environ.get("STRUCTGEN_FAULT_AT")
    if not spec or spec not in (f"{phase}:{epoch}:{rank}", f"{phase}:{epoch}:*"):
        return
    node = os.environ.get("STRUCTGEN_FAULT_NODE")
    if node:
        import ray
        if ray.get_runtime_context().get_node_id() != node:
            return
    marker = Path(os.environ.get("STRUCTGEN_FAULT_MARKER", "structgen-fault.marker"))
    if marker.exists():
        return
    what = os.environ.get("STRUCTGEN_FAULT_KILL", "process")
    raylet = _ancestor_named("raylet") if what == "node" else None
    if what == "node" and raylet is None:
        raise RuntimeError("STRUCTGEN_FAULT_KILL=node: this process does not run under a Ray raylet")
    marker.write_text(f"killed {what} at {phase}:{epoch}:{rank} pid {os.getpid()} raylet {raylet}\n")
    if raylet is not None:
        os.kill(raylet, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
