import json

import pytest

from structgen.tree import TopologyError, Tree


def test_complete_tree_bfs_and_kinds():
    t = Tree.complete(2)
    assert t.bfs() == ["r", "r0", "r1", "r00", "r01", "r10", "r11"]
    assert t.leaves() == ["r00", "r01", "r10", "r11"]
    assert t.internal() == ["r", "r0", "r1"]
    assert t.node_id("r10") == 5
    assert t.path_to_root("r01") == ["r01", "r0", "r"]


def test_attach_keeps_names_and_bfs_ids_follow_levels():
    t = Tree.complete(1).attach("r1")
    assert t.leaves() == ["r0", "r10", "r11"]
    t2 = t.attach("r0")
    # the shallow split moves the deeper nodes' BFS ids but not their names
    assert t2.bfs() == ["r", "r0", "r1", "r00", "r01", "r10", "r11"]
    assert t2.node_id("r10") == 5 and t.node_id("r10") == 3


def test_prune_makes_parent_passthrough_and_climbs_when_childless():
    t = Tree.complete(2).prune("r11")
    assert t.kind("r1") == "passthrough" and t.children("r1") == ["r10"]
    t = t.prune("r10")                 # r1 is left childless, so it goes too
    assert "r1" not in t and t.kind("r") == "passthrough"
    with pytest.raises(TopologyError, match="root"):
        Tree(["r"]).prune("r")


def test_bad_operations_and_names_fail_clearly():
    with pytest.raises(TopologyError, match="leaf"):
        Tree.complete(1).attach("r")
    with pytest.raises(TopologyError, match="not in the tree"):
        Tree.complete(1).children("r00")
    with pytest.raises(TopologyError, match="no parent"):
        Tree(["r", "r01"])
    with pytest.raises(TopologyError, match="bad node name"):
        Tree(["r", "r2"])


def test_json_round_trip_and_equality():
    t = Tree.complete(2).prune("r00").attach("r10")
    again = Tree.from_dict(json.loads(json.dumps(t.to_dict())))     # as checkpoints and tree.json hold it
    assert again == t and hash(again) == hash(t)
    assert again.kind("r0") == "passthrough"
    with pytest.raises(TopologyError):
        Tree.from_dict({"nodes": ["r"]})
    assert "r10 [internal]" in t.render()
