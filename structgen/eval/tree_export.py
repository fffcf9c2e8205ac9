"""A learned tree for other tools: ``tree.json``, a Newick string and a scipy linkage matrix.

``tree.json`` lists every node (name = root path, parent, depth, leaf flag, probability mass —
a leaf's share of the test images' leaf probability, an inner node's the sum of its leaves —,
the class histogram when the data has labels, and the leaf's image grids). Newick
(``((r00:1,r01:1)r0:1,r1:1)r;``, branch length 1 per level) opens in dendrogram viewers, ete3,
Bio.Phylo and dendropy. The linkage matrix (one row per internal node, scipy's
``[left, right, height, count]`` with height = the tree's depth minus the node's) feeds
``scipy.cluster.hierarchy.dendrogram``; pass-through nodes (one child) are skipped there.
"""
from __future__ import annotations

import re

import numpy as np

from structgen.tree.topology import ROOT, Tree

FORMAT = "structgen.tree-export/1"


def to_newick(tree: Tree) -> str:
    def walk(p: str) -> str:
        kids = tree.children(p)
        return (f"({','.join(walk(k) + ':1' for k in kids)})" if kids else "") + p
    return walk(ROOT) + ";"


_TOKEN = re.compile(r"\s*([(),;:])\s*|\s*([^(),;:\s]+)\s*")


def parse_newick(text: str) -> dict[str, str | None]:
    """{node name: parent name} of a Newick string with named nodes (branch lengths ignored)."""
    tokens = [a or b for a, b in _TOKEN.findall(text.strip())]
    parents: dict[str, str | None] = {}
    pos = 0

    def node() -> str:
        nonlocal pos
        kids = []
        if tokens[pos] == "(":
            pos += 1
            kids.append(node())
            while tokens[pos] == ",":
                pos += 1
                kids.append(node())
            if tokens[pos] != ")":
                raise ValueError(f"newick: expected ')' at token {pos}, got {tokens[pos]!r}")
            pos += 1
        name = tokens[pos] if pos < len(tokens) and tokens[pos] not in "(),;:" else ""
        if not name:
            raise ValueError("newick: every node needs a name here")
        pos += 1
        if pos < len(tokens) and tokens[pos] == ":":
            pos += 2
        for k in kids:
            parents[k] = name
        return name

    root = node()
    parents[root] = None
    return parents


def linkage(tree: Tree) -> tuple[np.ndarray, list[str]]:
    """scipy linkage matrix of the tree (pass-through nodes collapsed) and the leaf order it
    numbers 0..n-1 (``tree.leaves()``)."""
    leaves = tree.leaves()
    ids = {leaf: i for i, leaf in enumerate(leaves)}
    counts = {leaf: 1 for leaf in leaves}
    rows, top = [], tree.max_depth()
    # Children before parents, deepest first: so heights never decrease row by row, as scipy wants.
    for node in reversed(tree.bfs()):
        kids = tree.children(node)
        if len(kids) == 1:                       # pass-through: the same cluster as its child
            ids[node], counts[node] = ids[kids[0]], counts[kids[0]]
        elif len(kids) == 2:
            a, b = ids[kids[0]], ids[kids[1]]
            counts[node] = counts[kids[0]] + counts[kids[1]]
            rows.append([a, b, float(top - tree.depth(node) + 1), counts[node]])
            ids[node] = len(leaves) + len(rows) - 1
    return np.array(rows, dtype=np.float64).reshape(-1, 4), leaves


def export_document(tree: Tree, leaf_mass, leaf_hist=None, class_names=None, leaf_grids=None) -> dict:
    """The tree.json document. ``leaf_mass``/``leaf_hist`` are in ``tree.leaves()`` order;
    ``leaf_grids`` maps a leaf to {kind: path}."""
    leaves = tree.leaves()
    mass = dict(zip(leaves, map(float, leaf_mass)))
    for node in reversed(tree.bfs()):            # children before parents: an inner node sums its leaves
        kids = tree.children(node)
        mass[node] = sum(mass[k] for k in kids) if kids else mass.get(node, 0.0)
    hist = dict(zip(leaves, np.asarray(leaf_hist, dtype=np.int64).tolist())) if leaf_hist is not None else None
    nodes = []
    for node_id, node in enumerate(tree.bfs()):
        entry = {"name": node, "id": node_id, "parent": tree.parent(node), "depth": tree.depth(node),
                 "leaf": tree.kind(node) == "leaf", "kind": tree.kind(node), "mass": mass[node],
                 "children": tree.children(node)}
        if entry["leaf"]:
            entry["leaf_index"] = leaves.index(node)
            if hist is not None:
                entry["class_histogram"] = hist[node]
            entry["grids"] = (leaf_grids or {}).get(node, {})
        nodes.append(entry)
    z, _ = linkage(tree)
    return {"format": FORMAT, "root": ROOT, "leaves": leaves, "class_names": list(class_names or []) or None,
            "nodes": nodes, "newick": to_newick(tree), "linkage": z.tolist()}


def tree_from_document(doc: dict) -> Tree:
    return Tree(n["name"] for n in doc["nodes"])
