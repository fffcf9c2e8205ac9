"""Clustering metrics on the learned tree, and pixel-space baselines to compare against."""
from structgen.eval.clustering import (
    ari,
    cluster_acc,
    clustering_report,
    dendrogram_purity,
    leaf_histograms,
    leaf_purity,
    nmi,
)

__all__ = [
    "ari",
    "cluster_acc",
    "clustering_report",
    "dendrogram_purity",
    "leaf_histograms",
    "leaf_purity",
    "nmi",
]
