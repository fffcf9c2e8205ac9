"""Clustering metrics on the learned tree, and pixel-space baselines to compare against."""
