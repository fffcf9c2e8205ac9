"""Splits the full tree undoes (training.young_split_keep).

A sub-tree learns to split its leaf's images on those images alone; the next full-tree retrain
(intermediate or settle) may move most of one child's images elsewhere. On MNIST every sub-tree
split its images near evenly and that first retrain took 57-95 % of one child's share: such
children ended as clusters of 1-3 % of the images that still counted as effective, so growth
stopped with two leaves holding two digits each. These rules decide which young children to
prune so that growth goes on instead, and when their surviving sibling may not be split again.
"""
from __future__ import annotations

from structgen.tree.topology import Tree


def undone_children(before: dict[str, float], after: dict[str, float], keep: float) -> list[str]:
    """Of each split whose two children are in ``before`` (their mass when the retrain began) and
    ``after`` (when it ended), the child that kept the smaller fraction of its mass, when that
    fraction is under ``keep``; at most one per split, so a split is undone, not its whole branch."""
    undone = []
    for parent in sorted({child[:-1] for child in before}):
        pair = [c for c in (parent + "0", parent + "1") if c in before and c in after]
        if len(pair) < 2:
            continue
        child = min(pair, key=lambda c: after[c] / max(before[c], 1e-12))
        if after[child] < keep * before[child]:
            undone.append(child)
    return undone


def sibling(child: str) -> str:
    return child[:-1] + ("1" if child.endswith("0") else "0")


def may_split_again(tree: Tree, child: str) -> bool:
    """After ``child`` was pruned from ``tree``: may its sibling be split again? Not when the split
    above was undone too (the parent's parent is pass-through), so one cluster costs at most two
    undone splits."""
    grandparent = tree.parent(child[:-1])
    return grandparent is None or tree.kind(grandparent) != "passthrough"
