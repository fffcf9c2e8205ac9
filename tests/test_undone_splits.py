"""The rules behind training.young_split_keep (splits the full tree undoes); the growth that
applies them runs end to end in test_training.py."""
from structgen.train.undone_splits import may_split_again, sibling, undone_children
from structgen.tree.topology import Tree


def test_the_child_that_kept_the_smaller_fraction_of_its_mass_is_undone_under_keep():
    before = {"r00": 0.10, "r01": 0.10, "r10": 0.20, "r11": 0.04}
    after = {"r00": 0.17, "r01": 0.03, "r10": 0.18, "r11": 0.03}
    # r01 kept 30 % (undone at 0.5, not at 0.3); r11 kept 75 % and its sibling 90 %: kept
    assert undone_children(before, after, keep=0.5) == ["r01"]
    assert undone_children(before, after, keep=0.3) == []
    assert undone_children(before, after, keep=0.0) == []


def test_at_most_one_child_per_split_even_when_both_lost_mass():
    before = {"r10": 0.2, "r11": 0.2}
    after = {"r10": 0.05, "r11": 0.02}             # the branch as a whole lost mass: undo the split only
    assert undone_children(before, after, keep=0.5) == ["r11"]


def test_children_no_longer_leaves_or_without_their_sibling_are_not_judged():
    before = {"r00": 0.1, "r01": 0.1, "r10": 0.2}
    after = {"r00": 0.01, "r10": 0.0}               # r01 is gone from the leaves; r10 has no sibling in before
    assert undone_children(before, after, keep=0.5) == []


def test_an_emptied_child_with_no_mass_before_is_undone_only_if_it_lost_some():
    assert undone_children({"r0": 0.0, "r1": 0.5}, {"r0": 0.0, "r1": 0.5}, keep=0.5) == []
    assert undone_children({"r0": 0.01, "r1": 0.5}, {"r0": 0.0, "r1": 0.5}, keep=0.5) == ["r0"]


def test_a_survivor_may_be_split_again_once_not_after_two_undone_splits_in_a_row():
    assert sibling("r010") == "r011" and sibling("r011") == "r010"
    once = Tree.complete(2).prune("r01")            # r0 split into r00 / r01, r01 undone
    assert may_split_again(once, "r01")
    twice = once.attach("r00").prune("r001")        # r00 split again and undone again: r0 and r00 pass-through
    assert not may_split_again(twice, "r001")
    other = Tree.complete(2).prune("r01").attach("r10").prune("r100")   # undone splits in two branches
    assert may_split_again(other, "r100")
    assert may_split_again(Tree.complete(1).prune("r1"), "r1")          # below the root: nothing above it
