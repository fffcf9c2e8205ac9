"""How class-pure each leaf's generations are, as judged by the classifier (algorithm.md §6).

The reference only plots a normalised histogram of predicted classes per leaf. The number here
summarises those histograms: each leaf's majority-class share, averaged with the leaves'
probabilities as weights, so a rarely chosen leaf that mixes classes costs little and a leaf
that most samples go to costs a lot. 1.0 means every leaf generates a single class; 1/K is what
uniformly mixed leaves give.
"""
from __future__ import annotations

import numpy as np
import torch

from structgen.scoring.predict import predict_classes

PURITY_LABEL = "generation purity (leaf-weighted majority-class share)"


def leaf_class_histograms(classifier, leaf_images, num_classes: int, batch_size: int = 500) -> np.ndarray:
    """(L, num_classes) share of each leaf's images given to each class; rows sum to 1.

    leaf_images: (N, L, C, H, W), N generations for each of L leaves (as TreeVAE.generate
    returns them), uint8 or float (clamped to [0,1]).
    """
    shape = tuple(leaf_images.shape)
    if len(shape) != 5:
        raise ValueError(f"leaf_images: expected N x L x C x H x W, got shape {shape}")
    n, n_leaves = shape[:2]
    if n == 0 or n_leaves == 0:
        raise ValueError(f"leaf_images: need at least one image per leaf, got shape {shape}")
    k = getattr(classifier, "num_classes", num_classes)
    if k != num_classes:
        raise ValueError(f"num_classes={num_classes} but the classifier has {k} outputs")
    flat = leaf_images.reshape(n * n_leaves, *shape[2:])
    pred = predict_classes(classifier, flat, batch_size).reshape(n, n_leaves)
    return (pred[..., None] == np.arange(num_classes)).sum(0) / n  # (n, L, K) one-hot, summed over n


def generation_purity(histograms, leaf_weights) -> float:
    """Σ_l w_l · max_k h_lk with w normalised to sum 1 and each row h_l normalised to sum 1."""
    h = np.asarray(histograms, dtype=np.float64)
    w = np.asarray(leaf_weights.detach().cpu() if torch.is_tensor(leaf_weights) else leaf_weights,
                   dtype=np.float64).ravel()
    if h.ndim != 2 or h.shape[0] != len(w):
        raise ValueError(f"histograms must be (L, K) with L = len(leaf_weights) = {len(w)}, got shape {h.shape}")
    if (h < 0).any() or (w < 0).any() or not (np.isfinite(h).all() and np.isfinite(w).all()):
        raise ValueError("histograms and leaf_weights must be finite and non-negative")
    if w.sum() <= 0:
        raise ValueError("leaf_weights sum to 0: no leaf has probability mass")
    totals = h.sum(1)
    empty = (totals == 0) & (w > 0)
    if empty.any():
        raise ValueError(f"leaves {np.flatnonzero(empty).tolist()} have weight but an empty histogram")
    share = np.divide(h.max(1), totals, out=np.zeros_like(totals), where=totals > 0)
    return float((w / w.sum()) @ share)
