"""Opt-in fault injection, for testing recovery with a real process death.

Set STRUCTGEN_FAULT_AT="<phase name>:<epoch>:<rank>" and STRUCTGEN_FAULT_MARKER=<file>: the
matching rank kills itself with SIGKILL right after that epoch's checkpoint, once (the marker
file records that it happened). Unset, this does nothing.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path


def maybe_die(phase: str, epoch: int, rank: int) -> None:
    spec = os.environ.get("STRUCTGEN_FAULT_AT")
    if not spec or spec != f"{phase}:{epoch}:{rank}":
        return
    marker = Path(os.environ.get("STRUCTGEN_FAULT_MARKER", "structgen-fault.marker"))
    if marker.exists():
        return
    marker.write_text(f"killed {phase}:{epoch}:{rank} pid {os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
