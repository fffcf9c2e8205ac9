"""A tiny image set with a known two-level hierarchy, for tests and smoke runs.

Four classes in two superclasses (superclass = label // 2):

    0 big filled disk      1 small filled disk      (superclass 0: filled disks)
    2 thick square frame   3 thin square frame      (superclass 1: hollow squares)

The shapes are chosen so that pixel distances respect the hierarchy: the two disks differ by a
ring, the two frames by an inner band, but a disk and a frame barely overlap at all. So the
first split a clustering model finds is disk vs frame, and the next ones are size / thickness.
Mild jitter (position, size, brightness, Gaussian noise) keeps it from being trivial.
"""
from __future__ import annotations

import numpy as np

SIDE = 28
CLASS_NAMES = ["big disk", "small disk", "thick frame", "thin frame"]
SIZES = {"train": 2000, "test": 500}
_SPLIT_STREAM = {"train": 0, "test": 1}

# (radius) for disks; (outer half-side, inner half-side) for frames, in pixels.
_DISK_RADIUS = {0: 9.5, 1: 7.0}
_FRAME_SIDES = {2: (11.5, 6.5), 3: (11.5, 9.0)}
# Jitter: small enough that a class stays tighter than the gap to its sibling class.
_SHIFT = 0.75         # max centre offset, pixels
_SCALE = 0.04         # max relative size change
_BRIGHTNESS = (200.0, 255.0)
_NOISE = 8.0          # std of additive Gaussian pixel noise, grey levels


def _soft(t: np.ndarray) -> np.ndarray:
    """Anti-aliased step: 1 well inside (t >= 0.5), 0 well outside, linear over one pixel."""
    return np.clip(t + 0.5, 0.0, 1.0)


def make_synthetic(n: int, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images N x 1 x 28 x 28 uint8, labels int64, superclass int64), balanced over 4 classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 4).astype(np.int64)
    centre = (SIDE - 1) / 2 + rng.uniform(-_SHIFT, _SHIFT, size=(n, 2))
    scale = rng.uniform(1 - _SCALE, 1 + _SCALE, size=n)
    brightness = rng.uniform(*_BRIGHTNESS, size=n)

    ys, xs = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    dy = ys[None] - centre[:, 0, None, None]
    dx = xs[None] - centre[:, 1, None, None]
    euclid = np.hypot(dy, dx)
    cheb = np.maximum(np.abs(dy), np.abs(dx))

    radius = np.select([labels == 0], [_DISK_RADIUS[0]], _DISK_RADIUS[1]) * scale
    outer = np.select([labels == 2], [_FRAME_SIDES[2][0]], _FRAME_SIDES[3][0]) * scale
    inner = np.select([labels == 2], [_FRAME_SIDES[2][1]], _FRAME_SIDES[3][1]) * scale
    disk = _soft(radius[:, None, None] - euclid)
    frame = _soft(outer[:, None, None] - cheb) * _soft(cheb - inner[:, None, None])
    is_disk = (labels < 2)[:, None, None]
    shape = np.where(is_disk, disk, frame)

    pixels = shape * brightness[:, None, None] + rng.normal(0.0, _NOISE, size=shape.shape)
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)[:, None]
    return images, labels, labels // 2


def read_synthetic(split: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The default-size split; train and test come from different streams of the same seed."""
    return make_synthetic(SIZES[split], seed=[seed, _SPLIT_STREAM[split]])
