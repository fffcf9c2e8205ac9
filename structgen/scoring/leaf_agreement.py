"""Do a leaf's generations show the class of the real images that leaf holds? (issue 17, §3)

Purity asks whether a leaf generates *one* class; agreement asks whether it is the *right* one.
A leaf's real class is the majority label of the test images whose most probable leaf it is
(the TreeVAE posterior). A model's agreement is the share of a leaf's generated images that the
classifier gives that class, averaged with the leaves' probabilities as weights, as purity is.
A leaf that no test image reaches has no real class: it is left out, its weight with it.
"""
from __future__ import annotations

import numpy as np
import torch

from structgen.scoring.images import as_unit_images

AGREEMENT_LABEL = "agreement (leaf-weighted share of the class of the leaf's real test images)"


@torch.no_grad()
def leaf_majority_classes(vae, images, labels, num_classes: int, batch_size: int = 500) -> np.ndarray:
    """(L,) the most common label among the images routed to each leaf (argmax of the TreeVAE's
    leaf probabilities, BFS leaf order); -1 for a leaf no image reaches."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels: expected one label per image ({len(images)}), got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    device = next(vae.parameters()).device
    leaf = torch.cat([vae.predict(as_unit_images(images[i:i + batch_size]).to(device)).argmax(1).cpu()
                      for i in range(0, len(images), batch_size)]).numpy()
    counts = np.zeros((len(vae.tree.leaves()), num_classes), dtype=np.int64)
    np.add.at(counts, (leaf, labels), 1)
    return np.where(counts.sum(1) > 0, counts.argmax(1), -1)


def per_leaf_agreement(histograms, majority) -> np.ndarray:
    """(L,) share of each leaf's generations given its real class; NaN where it has none."""
    h = np.asarray(histograms, dtype=np.float64)
    majority = np.asarray(majority)
    if h.ndim != 2 or majority.shape != (h.shape[0],):
        raise ValueError(f"histograms (L, K) and majority (L,) must agree, got {h.shape} and {majority.shape}")
    known = majority >= 0
    share = np.full(len(h), np.nan)
    rows = np.flatnonzero(known)
    share[rows] = h[rows, majority[rows]] / h[rows].sum(1)
    return share


def majority_agreement(histograms, majority, leaf_weights) -> float:
    """Σ_l w_l · h_l[majority_l] over the leaves with a real class, w renormalised over them."""
    share = per_leaf_agreement(histograms, majority)
    w = np.asarray(leaf_weights.detach().cpu() if torch.is_tensor(leaf_weights) else leaf_weights,
                   dtype=np.float64).ravel()
    if w.shape != share.shape or (w < 0).any():
        raise ValueError(f"leaf_weights must be {share.shape[0]} non-negative numbers, got shape {w.shape}")
    known = ~np.isnan(share)
    if w[known].sum() <= 0:
        raise ValueError("no leaf with a real class has probability mass")
    return float(w[known] @ share[known] / w[known].sum())
