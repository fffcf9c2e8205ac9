"""One entry point for every image a score looks at: uint8 or float, numpy or torch -> float [0,1].

Float images are clamped to [0,1] before anything else. The reference casts unclamped floats
to uint8, so values outside [0,1] wrap around (algorithm.md §8.2); a clamp is the honest reading
of "a pixel brighter than white".
"""
from __future__ import annotations

import numpy as np
import torch


def as_unit_images(images, what: str = "images") -> torch.Tensor:
    """(N, C, H, W) float32 in [0,1] from uint8 (divided by 255) or float (clamped) input."""
    if isinstance(images, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(images))
    else:  # detached: scores never backpropagate into the generator
        t = torch.as_tensor(images).detach()
    if t.ndim != 4:
        raise ValueError(f"{what}: expected N x C x H x W, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise TypeError(f"{what}: expected uint8 or float pixels, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: {int((~torch.isfinite(t)).sum())} pixels are NaN or infinite")
    return t.float().clamp(0.0, 1.0)
