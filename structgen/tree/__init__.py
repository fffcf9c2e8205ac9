from structgen.tree.topology import Tree, TopologyError

__all__ = ["Tree", "TopologyError"]
