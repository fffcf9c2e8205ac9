"""What a run costs the machine, recorded beside its metrics."""
from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (the kernel's high-water mark)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10     # bytes on macOS, KiB on Linux


def memory_fields(device: torch.device) -> dict:
    """Fields for an epoch record: host peak RSS, and the device's peak allocation on CUDA."""
    fields = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        fields["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return fields
