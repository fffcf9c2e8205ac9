"""The classifier-Fréchet distance (CFD): the Fréchet distance between Gaussians fitted to the
judging classifier's penultimate features of two image sets.

It is built exactly like FID, but FID means InceptionV3 pool3 features, and Inception weights
cannot be fetched here; numbers from this module are NOT comparable with published FIDs and
are always labelled CFD.

    d² = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)

Reference statistics (e.g. of the test set) are cached in memory per classifier object, never
on disk, so a retrained classifier can never meet stale statistics.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from structgen.scoring.predict import classifier_features

__all__ = ["CFD_LABEL", "FeatureStats", "classifier_features", "feature_stats", "frechet_distance",
           "frechet_distance_from_stats", "reference_stats", "classifier_frechet_distance"]

CFD_LABEL = "classifier-Fréchet distance (CFD)"
# Relative size of the imaginary part of sqrtm's result that is still rounding noise.
_IMAG_TOLERANCE = 1e-3


@dataclass(frozen=True)
class FeatureStats:
    mu: np.ndarray      # (D,)
    sigma: np.ndarray   # (D, D), unbiased covariance
    n: int


def stats_of(feats) -> FeatureStats:
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2 to estimate a covariance, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return FeatureStats(f.mean(0), np.atleast_2d(np.cov(f, rowvar=False)), len(f))


def feature_stats(classifier, images, batch_size: int = 500) -> FeatureStats:
    return stats_of(classifier_features(classifier, images, batch_size))


def _sqrtm(m: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's sqrtm and whether it was trustworthy (finite, and the input not flagged singular)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(m)
    singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
    return root, bool(np.isfinite(root).all()) and not singular


def _sqrtm_product(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float) -> np.ndarray:
    """(Σ_a Σ_b)^½, real. Singular products (fewer samples than dimensions, dead features) make
    sqrtm inaccurate, so it is then recomputed with eps·I added to both covariances."""
    covmean, ok = _sqrtm(sigma_a @ sigma_b)
    if not ok:
        offset = eps * np.eye(len(sigma_a))
        covmean, ok = _sqrtm((sigma_a + offset) @ (sigma_b + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root of the feature covariances is not finite even after adding "
                             f"{eps:g}·I; the features are degenerate")
    if np.iscomplexobj(covmean):
        scale = max(np.abs(covmean.real).max(), 1e-12)
        worst = np.abs(covmean.imag).max()
        if worst > _IMAG_TOLERANCE * scale:
            raise ValueError(f"matrix square root has an imaginary part of {worst:.3g} (relative "
                             f"{worst / scale:.3g}); the feature covariances are too ill-conditioned")
        covmean = covmean.real
    return covmean


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = a.mu - b.mu
    covmean = _sqrtm_product(a.sigma, b.sigma, eps)
    d2 = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean)
    return float(max(d2, 0.0))  # rounding can push identical sets a hair below zero


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (squared, as FID)."""
    return frechet_distance_from_stats(stats_of(feats_a), stats_of(feats_b))


# classifier object -> {key: FeatureStats}; entries vanish with the classifier.
_STATS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def reference_stats(classifier, dataset: str, split: str = "test", data_dir=None, n: int | None = None,
                    batch_size: int = 500) -> FeatureStats:
    """Feature statistics of a dataset split (the first n images), cached in memory."""
    from structgen.data import load_split
    from structgen.scoring.classifier import SPLIT_SEED

    trained_on = getattr(classifier, "dataset", None)
    if trained_on not in (None, dataset):
        raise ValueError(f"the classifier was trained on {trained_on!r}; it cannot judge {dataset!r} images")
    key = (dataset, split, None if data_dir is None else str(data_dir), n)
    per_model = _STATS_CACHE.setdefault(classifier, {})
    if key not in per_model:
        images = load_split(dataset, split, data_dir, seed=SPLIT_SEED).images
        per_model[key] = feature_stats(classifier, images if n is None else images[:n], batch_size)
    return per_model[key]


def classifier_frechet_distance(classifier, images, dataset: str, split: str = "test", data_dir=None,
                                n_reference: int | None = None, batch_size: int = 500) -> float:
    """CFD of ``images`` (uint8 or float, clamped) against a dataset split."""
    ref = reference_stats(classifier, dataset, split, data_dir, n_reference, batch_size)
    return frechet_distance_from_stats(feature_stats(classifier, images, batch_size), ref)
