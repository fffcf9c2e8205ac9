"""Whether a data set fits in memory: asked before the in-RAM loader materialises one.

A data set read from a ``.beton`` (dataset ``beton``) can be larger than memory; the memory
loader would hold it all, so it is refused up front, with the way out, instead of the kernel
killing the run halfway through reading it.
"""
from __future__ import annotations

from pathlib import Path

from structgen.errors import DataError

GIB = 1 << 30
# What else a run holds beside its images (the model, its optimiser, activations, the float
# batch copies): the images may take at most this share of the memory there is.
_SHARE_FOR_IMAGES = 0.5


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's cgroup (v2) may still take, or None where it has no limit."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        group = root / rel.lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((group / "memory.current").read_text()), 0)
    except (OSError, IndexError, ValueError):
        return None


def available_memory() -> int:
    """Bytes a new allocation can have: the machine's MemAvailable, capped by the cgroup's room."""
    free = _meminfo_available()
    room = _cgroup_room()
    return free if room is None else min(free, room)


def check_fits_in_memory(nbytes: int, what: str, limit_gb: float = 0.0) -> None:
    """Refuse to load ``nbytes`` of images when they would not fit.

    ``limit_gb`` is data.memory_limit_gb: a budget the user sets for the images (0 = half of what
    the machine, or the cgroup, has free now).
    """
    free = 0 if limit_gb else available_memory()
    budget = int(limit_gb * GIB) if limit_gb else int(free * _SHARE_FOR_IMAGES)
    if nbytes > budget:
        source = f"data.memory_limit_gb = {limit_gb}" if limit_gb else \
            f"half of the {free / GIB:.1f} GiB this machine has free"
        raise DataError(f"{what}: {nbytes / GIB:.2f} GiB of images do not fit in memory ({source}); "
                        f"stream them from the .beton file instead with data.loader: ffcv "
                        f"(--set data.loader=ffcv)")
