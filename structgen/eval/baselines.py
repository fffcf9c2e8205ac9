"""Pixel-space clustering baselines: what a tree has to beat without learning anything.

Both run on flattened pixels scaled to [0,1], the same view the reference's k-means number
(algorithm.md §10) was measured on.
"""
from __future__ import annotations

import time

import numpy as np

from structgen.eval.clustering import ari, cluster_acc, nmi


def pixel_baselines(images_uint8_NCHW, y_true, n_clusters: int, seed: int = 0, max_ward: int = 10000) -> dict:
    """k-means and Ward agglomerative clustering on raw pixels: ACC/NMI/ARI against ``y_true``,
    or, when ``y_true`` is None (unlabelled data), the cluster sizes (largest first).

    Ward needs the full pairwise structure (O(N^2) memory), so above ``max_ward`` samples it is
    fitted on a seeded random subset of ``max_ward`` images and scored on that subset; the
    returned dict then carries ``"ward_subset": max_ward`` so the number is never mistaken for
    a full-set score. Each entry also carries its fitting time in ``seconds``.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans

    images = np.asarray(images_uint8_NCHW)
    if images.ndim < 2:
        raise ValueError(f"pixel_baselines expects images shaped (N, C, H, W); got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"pixel_baselines expects uint8 images (0..255); got dtype {images.dtype}")
    # float32 halves memory versus float64 and k-means is insensitive to the difference.
    x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    y = np.zeros(x.shape[0], dtype=np.int64) if y_true is None else np.asarray(y_true).astype(np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y_true has shape {y.shape} but there are {x.shape[0]} images")
    if not 1 <= n_clusters <= x.shape[0]:
        raise ValueError(f"n_clusters must be in 1..{x.shape[0]} (the number of images); got {n_clusters}")

    def fit_and_score(model, x_fit: np.ndarray, y_fit: np.ndarray) -> dict:
        start = time.perf_counter()
        pred = model.fit(x_fit).labels_
        seconds = round(time.perf_counter() - start, 2)
        if y_true is None:  # without labels a baseline can only say how it splits the images
            scores = {"sizes": sorted(np.bincount(pred, minlength=n_clusters).tolist(), reverse=True)}
        else:
            scores = {"acc": cluster_acc(y_fit, pred), "nmi": nmi(y_fit, pred), "ari": ari(y_fit, pred)}
        return {**scores, "seconds": seconds}

    result = {"kmeans": fit_and_score(KMeans(n_clusters=n_clusters, n_init=10, random_state=seed), x, y)}
    if x.shape[0] > max_ward:
        keep = np.random.default_rng(seed).choice(x.shape[0], size=max_ward, replace=False)
        x, y = x[keep], y[keep]
        result["ward_subset"] = int(max_ward)
    result["ward"] = fit_and_score(AgglomerativeClustering(n_clusters=n_clusters, linkage="ward"), x, y)
    return result
