"""Figures: image grids, original/reconstruction pairs, and the learned tree with its leaves.

matplotlib and PIL are imported inside the functions so that ``import structgen`` stays fast.
"""
from structgen.viz.grids import grid_array, save_figure, save_grid, save_side_by_side
from structgen.viz.tree_figure import draw_tree_figure

__all__ = ["draw_tree_figure", "grid_array", "save_figure", "save_grid", "save_side_by_side"]
