"""Seeded train/test splits for sources that ship only one split (digits, a lone CIFAR folder).

The split is stratified: every class contributes ``round(n_class * test_fraction)`` images to
test, chosen by a permutation drawn from ``seed``. The same (labels, seed, fraction) always
gives the same split, and train and test are disjoint and together cover every image.
"""
from __future__ import annotations

import numpy as np

from structgen.errors import DataError


def check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction!r}: must be strictly between 0 and 1")


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_indices, test_indices) into ``labels``."""
    check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(labels):  # one pass per class, not per image
        members = np.flatnonzero(labels == c)
        k = int(round(len(members) * test_fraction))
        test_parts.append(rng.permutation(members)[:k])
    is_test = np.zeros(len(labels), dtype=bool)
    if test_parts:
        is_test[np.concatenate(test_parts)] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def take_split(images: np.ndarray, labels: np.ndarray, split: str, test_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` part ("train" or "test") of a seeded stratified split."""
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx]
