"""The tree topology as plain data.

A node is named by its path from the root: ``"r"`` is the root, ``"r0"`` its left child,
``"r01"`` the right child of that, and so on. A tree is just the set of those names. The names
are stable under ``attach`` and ``prune`` (unlike BFS indices, which shift when a shallow leaf
splits), so module containers are keyed by them and never need renaming; the BFS index that the
specification calls the "node id" (and the DDPM path conditioning uses) is derived on demand.

Kinds: a node with two children is *internal* (it has routers), one child is *pass-through*
(left behind by pruning; it forwards its probability unchanged), none is a *leaf* (it has a
decoder).
"""
from __future__ import annotations

import itertools
from typing import Iterable

from structgen.errors import TopologyError

ROOT = "r"


class Tree:
    """An immutable binary tree topology; operations return new trees."""

    __slots__ = ("_paths",)

    def __init__(self, paths: Iterable[str]):
        paths = frozenset(paths)
        if ROOT not in paths:
            raise TopologyError(f"a tree needs its root {ROOT!r}; got {sorted(paths)}")
        for p in paths:
            if not p.startswith(ROOT) or set(p[1:]) - {"0", "1"}:
                raise TopologyError(f"bad node name {p!r}: expected 'r' followed by 0/1 digits")
            if p != ROOT and p[:-1] not in paths:
                raise TopologyError(f"node {p!r} has no parent {p[:-1]!r} in the tree")
        self._paths = paths

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def complete(cls, depth: int) -> "Tree":
        """A full binary tree of the given depth (depth 1 = root + 2 leaves)."""
        return cls(ROOT + "".join(bits) for d in range(depth + 1) for bits in itertools.product("01", repeat=d))

    def attach(self, leaf: str) -> "Tree":
        """Split ``leaf`` into two new leaves."""
        if self.kind(leaf) != "leaf":
            raise TopologyError(f"can only attach below a leaf; {leaf!r} is {self.kind(leaf)}")
        return Tree(self._paths | {leaf + "0", leaf + "1"})

    def prune(self, leaf: str) -> "Tree":
        """Remove ``leaf``; ancestors left with no children are removed too (never the root)."""
        if self.kind(leaf) != "leaf":
            raise TopologyError(f"can only prune a leaf; {leaf!r} is {self.kind(leaf)}")
        if leaf == ROOT:
            raise TopologyError("the root cannot be pruned")
        paths = self._paths - {leaf}
        node = leaf[:-1]
        while node != ROOT and not {node + "0", node + "1"} & paths:  # an ancestor left childless goes too
            paths -= {node}
            node = node[:-1]
        return Tree(paths)

    # ---- queries --------------------------------------------------------------------------
    def __contains__(self, path: str) -> bool:
        return path in self._paths

    def __len__(self) -> int:
        return len(self._paths)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and self._paths == other._paths

    def __hash__(self) -> int:
        return hash(self._paths)

    def bfs(self) -> list[str]:
        """All nodes in BFS order (root, depth 1 left-to-right, ...)."""
        # Within a depth, string order of the equally long 0/1 names is left-to-right.
        return sorted(self._paths, key=lambda path: (len(path), path))

    def children(self, path: str) -> list[str]:
        self._check(path)
        return [c for c in (path + "0", path + "1") if c in self._paths]

    def parent(self, path: str) -> str | None:
        self._check(path)
        return None if path == ROOT else path[:-1]

    @staticmethod
    def depth(path: str) -> int:
        return len(path) - 1

    def kind(self, path: str) -> str:
        return ("leaf", "passthrough", "internal")[len(self.children(path))]

    def leaves(self) -> list[str]:
        """Leaves in BFS order: this order defines the leaf index used everywhere."""
        return [p for p in self.bfs() if self.kind(p) == "leaf"]

    def internal(self) -> list[str]:
        return [p for p in self.bfs() if self.kind(p) == "internal"]

    def max_depth(self) -> int:
        return max(self.depth(p) for p in self._paths)

    def node_id(self, path: str) -> int:
        """The BFS index of a node (root = 0)."""
        self._check(path)
        return self.bfs().index(path)

    def path_to_root(self, path: str) -> list[str]:
        """Nodes from ``path`` up to and including the root."""
        self._check(path)
        return [path[:k] for k in range(len(path), 0, -1)]

    def _check(self, path: str) -> None:
        if path not in self._paths:
            raise TopologyError(f"node {path!r} is not in the tree {self.bfs()}")

    # ---- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": "structgen.tree/1", "nodes": self.bfs()}

    @classmethod
    def from_dict(cls, data: dict) -> "Tree":
        if not isinstance(data, dict) or data.get("format") != "structgen.tree/1":
            raise TopologyError(f"not a serialised structgen tree: {str(data)[:80]}")
        return cls(data["nodes"])

    def __repr__(self) -> str:
        return f"Tree({self.bfs()})"

    def render(self, label=None) -> str:
        """An indented text drawing; ``label(path)`` may add text after each node."""
        lines = []

        def walk(p: str, indent: str) -> None:
            extra = f"  {label(p)}" if label else ""
            lines.append(f"{indent}{p} [{self.kind(p)}]{extra}")
            for c in self.children(p):
                walk(c, indent + "  ")

        walk(ROOT, "")
        return "\n".join(lines)
