"""The paper's generation figure: the tree, each leaf's generated images, its probability and,
under it, the histogram of classes the classifier assigns to those images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from structgen.scoring.images import as_unit_images
from structgen.scoring.purity import generation_purity
from structgen.viz.tree_figure import draw_tree_figure


def draw_generation_figure(tree, leaf_images, histograms, leaf_weights, path, class_names=None,
                           n_show: int = 16, title: str | None = None) -> Path:
    """leaf_images (N, L, C, H, W) in tree.leaves() order; histograms (L, K) from
    leaf_class_histograms; leaf_weights (L,). The title carries the generation purity."""
    leaves = tree.leaves()
    hist = np.asarray(histograms, dtype=np.float64)
    weights = np.asarray(leaf_weights, dtype=np.float64).ravel()
    if leaf_images.shape[1] != len(leaves) or hist.shape[0] != len(leaves) or len(weights) != len(leaves):
        raise ValueError(f"the tree has {len(leaves)} leaves, but leaf_images has {leaf_images.shape[1]}, "
                         f"histograms {hist.shape[0]} and leaf_weights {len(weights)}")
    shown = leaf_images[:n_show]
    images = {leaf: as_unit_images(shown[:, i], f"leaf {leaf} images").numpy() for i, leaf in enumerate(leaves)}
    purity = generation_purity(hist, weights)
    heading = f"generation purity {purity:.3f}" if title is None else f"{title} — generation purity {purity:.3f}"
    return draw_tree_figure(tree, images, weights / weights.sum(), hist, path, class_names=class_names,
                            title=heading)
