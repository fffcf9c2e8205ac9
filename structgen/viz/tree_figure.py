"""The paper-style tree figure: the learned hierarchy with each leaf's samples, mass and classes.

Layout: leaves get one column each, in in-order (left subtree before right), which is the
order that makes tree edges never cross; an inner node sits at the mean x of its children, a
pass-through node straight above its only child. Nodes are drawn at their true depth; a dotted
line drops from every leaf to the bottom of the tree panel, where its column of panels
(sample grid, "p=…", optionally the real images the leaf holds most confidently, and the class
histogram when there are labels) begins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from structgen.tree.topology import Tree
from structgen.viz.grids import grid_array, save_figure

# Physical sizes in inches; chosen so 12 leaves at depth 6 still read at 100% zoom.
COLUMN_W = 1.5
LEVEL_H = 0.45
IMAGE_H = 1.35
MASS_H = 0.35
HIST_H = 1.0
LABELS_H = 0.55
TITLE_H = 0.45
MARGIN_L = 0.45  # room for the first histogram's y tick labels
MARGIN_R = 0.15
DPI = 120


def leaf_columns(tree: Tree) -> dict[str, float]:
    """x of every node: leaves 0, 1, 2, … in in-order; parents at the mean of their children."""
    # No leaf's name is a prefix of another's, so sorting the names puts a "0" (left) branch
    # before its "1" sibling: string order is in-order.
    xs = {leaf: float(i) for i, leaf in enumerate(sorted(tree.leaves()))}
    for node in reversed(tree.bfs()):  # children before parents
        kids = tree.children(node)
        if kids:
            xs[node] = float(np.mean([xs[k] for k in kids]))
    return xs


def _by_leaf(name: str, values, leaves: list[str]) -> dict:
    """Accept a {leaf: value} mapping or a sequence aligned with ``tree.leaves()``."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        unknown = sorted(set(values) - set(leaves))
        if unknown:
            raise ValueError(f"{name} names {unknown}, which are not leaves of the tree {leaves}")
        return dict(values)
    if len(values) != len(leaves):
        raise ValueError(f"{name} has {len(values)} rows but the tree has {len(leaves)} leaves {leaves}")
    return dict(zip(leaves, values))


def _draw_edges_and_nodes(ax, tree: Tree, xs: dict[str, float], bottom: float) -> None:
    style = {
        "internal": dict(marker="o", s=60, facecolors="0.25", edgecolors="0.1"),
        "passthrough": dict(marker="o", s=60, facecolors="white", edgecolors="0.1"),
        "leaf": dict(marker="s", s=50, facecolors="tab:blue", edgecolors="0.1"),
    }
    for node in tree.bfs():  # zorder, not drawing order, puts nodes over edges
        x, y = xs[node], -tree.depth(node)
        for kid in tree.children(node):
            ax.plot([x, xs[kid]], [y, -tree.depth(kid)], color="0.35", lw=1.0, zorder=1)
        kind = tree.kind(node)
        ax.scatter([x], [y], zorder=3, linewidths=0.8, **style[kind])
        if kind == "leaf" and y > bottom:
            ax.plot([x, x], [y, bottom], color="0.6", lw=0.8, ls=":", zorder=0)
        ax.annotate(node, (x, y), xytext=(5, 3), textcoords="offset points", fontsize=7, color="0.15")


def draw_tree_figure(
    tree: Tree,
    leaf_images,
    leaf_mass,
    leaf_hist,
    path,
    class_names=None,
    title: str | None = None,
    leaf_examples=None,
) -> Path:
    """Write the tree figure to ``path`` (PNG, or any format matplotlib infers from the suffix).

    leaf_images: {leaf: (k, C, H, W) uint8 or float in [0,1]}; leaf_mass: {leaf: probability};
    leaf_hist: {leaf: class counts} or None; leaf_examples: {leaf: (k, C, H, W)} real images
    (a second row of panels) or None. Each may also be a sequence in ``tree.leaves()``
    order. Missing leaves are drawn as blank panels rather than failing a run's last step.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend selection

    leaves = tree.leaves()
    images = _by_leaf("leaf_images", leaf_images, leaves)
    mass = _by_leaf("leaf_mass", leaf_mass, leaves)
    hists = _by_leaf("leaf_hist", leaf_hist, leaves)
    examples = _by_leaf("leaf_examples", leaf_examples, leaves) if leaf_examples is not None else None
    xs = leaf_columns(tree)
    in_order = sorted(leaves, key=lambda leaf: xs[leaf])
    n_cols, depth = len(leaves), tree.max_depth()
    n_classes = max((len(np.ravel(h)) for h in hists.values()), default=0)

    tree_h = LEVEL_H * (depth + 1) + 0.2
    examples_h = IMAGE_H if examples is not None else 0.0
    panels_h = IMAGE_H + MASS_H + examples_h + (HIST_H + LABELS_H if hists else 0.0)
    top_h = TITLE_H if title else 0.1
    fig_w = max(MARGIN_L + COLUMN_W * n_cols + MARGIN_R, 3.0)
    fig_h = top_h + tree_h + panels_h
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    col_w = COLUMN_W / fig_w
    # Centre the columns in what the margins leave (a 2-leaf figure is wider than its columns).
    x0 = (MARGIN_L + (fig_w - MARGIN_L - MARGIN_R - COLUMN_W * n_cols) / 2) / fig_w

    def box(left_in_col: float, bottom_in: float, width_in_col: float, height_in: float):
        return [left_in_col, bottom_in / fig_h, width_in_col, height_in / fig_h]

    tree_ax = fig.add_axes(box(x0, panels_h, col_w * n_cols, tree_h))
    tree_ax.set_xlim(-0.5, n_cols - 0.5)
    tree_ax.set_ylim(-depth - 0.35, 0.35)
    tree_ax.axis("off")
    _draw_edges_and_nodes(tree_ax, tree, xs, bottom=-depth - 0.35)

    colors = _class_colors(n_classes)
    for col, leaf in enumerate(in_order):
        left = x0 + col * col_w + 0.06 * col_w
        width = 0.88 * col_w
        img_ax = fig.add_axes(box(left, panels_h - IMAGE_H, width, IMAGE_H - 0.05))
        _draw_grid(img_ax, images.get(leaf), "no samples")
        p = mass.get(leaf)
        label = f"{leaf}\np={p:.2f}" if p is not None else f"{leaf}\np=n/a"
        fig.text(left + width / 2, (panels_h - IMAGE_H - 0.05) / fig_h, label,
                 ha="center", va="top", fontsize=8)
        if examples is not None:
            ex_ax = fig.add_axes(box(left, panels_h - IMAGE_H - MASS_H - examples_h, width, examples_h - 0.05))
            _draw_grid(ex_ax, examples.get(leaf), "no images")
            if col == 0:
                for text, top in (("samples", panels_h), ("top real images", panels_h - IMAGE_H - MASS_H)):
                    fig.text(left - 0.02 * col_w, (top - IMAGE_H / 2) / fig_h, text, rotation=90, ha="right",
                             va="center", fontsize=6, color="0.3")
        if hists:
            hist_ax = fig.add_axes(box(left, LABELS_H, width, HIST_H))
            _draw_histogram(hist_ax, hists.get(leaf), n_classes, colors, class_names, first=(col == 0))

    return save_figure(fig, path, DPI, title)


def _draw_grid(ax, images, empty: str) -> None:
    ax.axis("off")
    if images is not None and len(images):
        grid = grid_array(images, pad=1)  # ≈ √k images per row
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=7, color="0.4", transform=ax.transAxes)


def _class_colors(n_classes: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_classes <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n_classes, 1))]


def _draw_histogram(ax, counts, n_classes: int, colors, class_names, first: bool) -> None:
    idx = np.arange(n_classes)
    counts = np.zeros(n_classes) if counts is None else np.asarray(counts, dtype=np.float64).ravel()
    if counts.shape != (n_classes,):
        raise ValueError(f"leaf histograms disagree on the number of classes: {counts.shape[0]} vs {n_classes}")
    total = counts.sum()
    share = counts / total if total > 0 else counts
    ax.bar(idx, share, color=colors[:n_classes], width=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, n_classes - 0.4)
    names = [str(c) for c in (class_names if class_names is not None else idx)]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names but histograms have {n_classes} classes")
    ax.set_xticks(idx)
    long = max(len(s) for s in names) > 2
    ax.set_xticklabels(names, fontsize=5 if long else 6, rotation=90 if long else 0)
    ax.tick_params(axis="both", length=2, pad=1)
    ax.set_yticks([0, 0.5, 1])
    if first:
        ax.tick_params(axis="y", labelsize=6)
        ax.set_ylabel("class share", fontsize=6, labelpad=1)
    else:
        ax.set_yticklabels([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
