"""Counts and pixel statistics of a loaded split, for the CLI and for sanity checks."""
from __future__ import annotations

import numpy as np

_CHUNK = 8192  # images per bincount pass: bounds the int64 temporary bincount makes


def _pixel_histogram(images: np.ndarray) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    flat = images.reshape(len(images), -1)
    for start in range(0, len(flat), _CHUNK):
        counts += np.bincount(flat[start:start + _CHUNK].ravel(), minlength=256)
    return counts


def summarize(ds) -> dict:
    """Dataset, split, count, shape [C,H,W], pixel mean/std in [0,1], images per class."""
    hist = _pixel_histogram(ds.images)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = max(int(hist.sum()), 1)
    mean = float(hist @ values / total)
    std = float(np.sqrt(max(hist @ values**2 / total - mean**2, 0.0)))
    # unlabelled user data: labels are -1 and there are no classes to count
    per_class = np.bincount(ds.labels, minlength=len(ds.class_names)) if ds.class_names else []
    return {
        "dataset": ds.name,
        "split": ds.split,
        "count": int(len(ds.images)),
        "shape": [int(s) for s in ds.images.shape[1:]],
        "mean": mean,
        "std": std,
        "counts_per_class": {n: int(c) for n, c in zip(ds.class_names, per_class)},
    }


def format_summary(summary: dict) -> str:
    c, h, w = summary["shape"]
    classes = ", ".join(f"{name}: {n}" for name, n in summary["counts_per_class"].items()) or "unlabelled"
    return "\n".join([
        f"{summary['dataset']}/{summary['split']}: {summary['count']} images of {c}x{h}x{w}",
        f"  pixel mean {summary['mean']:.4f}, std {summary['std']:.4f} (scaled to [0,1])",
        f"  per class: {classes}",
    ])
