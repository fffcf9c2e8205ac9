"""Clustering metrics against hand-computed values and an independent brute-force reference."""
import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from structgen.eval.baselines import pixel_baselines
from structgen.eval.clustering import (
    ari,
    cluster_acc,
    clustering_report,
    dendrogram_purity,
    leaf_histograms,
    leaf_purity,
    nmi,
)
from structgen.tree import Tree


def samples_from_histogram(tree, hist):
    """(y_true, leaf_pred) realising per-leaf class counts; rows follow tree.leaves()."""
    hist = np.asarray(hist)
    leaf_idx, cls = np.nonzero(hist)
    reps = hist[leaf_idx, cls]
    return np.repeat(cls, reps), np.repeat(leaf_idx, reps)


def brute_force_dendrogram_purity(tree, y, leaf_pred):
    """Definition straight from the paper: mean over same-class pairs of the class share at
    the pair's lowest common ancestor (longest common name prefix of the two leaves)."""
    names = np.array(tree.leaves())[leaf_pred]
    scores = []
    for i, j in itertools.combinations(range(len(y)), 2):
        if y[i] != y[j]:
            continue
        a, b = names[i], names[j]
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        lca = a[:k]
        under = np.char.startswith(names.astype(str), lca)
        scores.append(np.mean(y[under] == y[i]))
    return float(np.mean(scores))


# ---- ACC / NMI / ARI ----------------------------------------------------------------------------

def test_acc_is_one_for_permuted_labels():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    perm = np.array([2, 0, 1])
    assert cluster_acc(y, perm[y]) == 1.0
    assert nmi(y, perm[y]) == pytest.approx(1.0)
    assert ari(y, perm[y]) == pytest.approx(1.0)


def test_acc_needs_optimal_not_greedy_matching():
    # counts[pred, true] = [[5, 4], [4, 0]]: greedy takes the 5 and is left with 0 (5/13);
    # the optimum matches pred0->true1 and pred1->true0 for 4 + 4 = 8 of 13.
    y_pred = np.array([0] * 9 + [1] * 4)
    y_true = np.array([0] * 5 + [1] * 4 + [0] * 4)
    assert cluster_acc(y_true, y_pred) == pytest.approx(8 / 13)


def test_acc_with_more_clusters_than_classes_and_vice_versa():
    # counts[pred, true] = [[5, 1], [2, 4], [0, 3]]: best one-to-one is 5 + 4 = 9 of 15.
    y_pred = np.array([0] * 6 + [1] * 6 + [2] * 3)
    y_true = np.array([0] * 5 + [1] + [0] * 2 + [1] * 4 + [1] * 3)
    assert cluster_acc(y_true, y_pred) == pytest.approx(9 / 15)
    # Transposed roles: 3 classes, 2 clusters; the same matching is optimal.
    assert cluster_acc(y_pred, y_true) == pytest.approx(9 / 15)


def test_ari_near_zero_for_independent_labels():
    rng = np.random.default_rng(0)
    assert abs(ari(rng.integers(0, 5, 5000), rng.integers(0, 5, 5000))) < 0.01


def test_nmi_and_ari_equal_scikit_learns_on_random_and_degenerate_labellings():
    """Our count-matrix NMI and ARI against scikit-learn's, the definitions the README's tables
    and the reference use: random labellings, relabelled copies, one class or one cluster, single
    samples, and a 60k-image case (ARI's pair counts pass int64's range there)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    cases = [(np.zeros(7, int), np.zeros(7, int)), (np.zeros(7, int), np.arange(7)), (np.arange(7), np.zeros(7, int)),
             (np.array([3]), np.array([0])), (np.array([0, 0, 1, 1]), np.array([5, 5, 2, 2]))]
    for _ in range(400):
        n = int(rng.integers(1, 50))
        true = rng.integers(0, int(rng.integers(1, 6)), n)
        cases += [(true, rng.integers(0, int(rng.integers(1, 6)), n)), (true, (true * 3 + 1) % 5)]
    big = rng.integers(0, 10, 60_000)
    cases.append((big, (big + (rng.random(60_000) < 0.3) * rng.integers(0, 10, 60_000)) % 12))
    for true, pred in cases:
        assert nmi(true, pred) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12), (true, pred)
        assert ari(true, pred) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12), (true, pred)


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        cluster_acc([0, 1, 1], [0, 1])


# ---- leaf purity and histograms -------------------------------------------------------------------

def test_leaf_histograms_and_purity_on_known_counts():
    tree = Tree.complete(1).attach("r1")  # leaves in order: r0, r10, r11
    hist = [[3, 1], [0, 0], [2, 2]]  # r10 empty: purity 1.0 but weight 0
    y, leaf = samples_from_histogram(tree, hist)
    np.testing.assert_array_equal(leaf_histograms(tree, y, leaf, 2), hist)
    # size-weighted: (4 * 3/4 + 4 * 2/4) / 8
    assert leaf_purity(tree, y, leaf, 2) == pytest.approx(5 / 8)


def test_leaf_index_out_of_range_is_reported():
    with pytest.raises(ValueError, match="leaf index 2 but the tree has 2 leaves"):
        leaf_histograms(Tree.complete(1), [0, 1], [0, 2], 2)


# ---- dendrogram purity ----------------------------------------------------------------------------

def test_dendrogram_purity_hand_computed_three_leaves():
    tree = Tree.complete(1).attach("r1")  # r0, r10, r11
    hist = [[3, 0], [1, 2], [0, 2]]
    # P = C(4,2) + C(4,2) = 12.  Node credits (share * pairs):
    #   r0: class0 1 * C(3,2)=3          -> 3
    #   r10: class1 (2/3) * C(2,2)=1      -> 2/3
    #   r11: class1 1 * 1                 -> 1
    #   r1 (counts [1,4]): class1 (4/5) * 2*2 -> 16/5
    #   r  (counts [4,4]): class0 (4/8) * 3*1 -> 3/2
    expected = (Fraction(3) + Fraction(2, 3) + 1 + Fraction(16, 5) + Fraction(3, 2)) / 12
    y, leaf = samples_from_histogram(tree, hist)
    assert dendrogram_purity(tree, y, leaf, 2) == pytest.approx(float(expected))
    assert float(expected) == pytest.approx(brute_force_dendrogram_purity(tree, y, leaf))


def test_dendrogram_purity_is_one_for_a_perfect_tree():
    tree = Tree.complete(2)
    y, leaf = samples_from_histogram(tree, np.diag([5, 3, 4, 6]))
    assert dendrogram_purity(tree, y, leaf, 4) == pytest.approx(1.0)


def test_dendrogram_purity_rewards_splitting_a_class_into_siblings():
    tree = Tree.complete(2)  # leaves r00, r01, r10, r11
    # Class 0 split over siblings r00/r01: every class-0 cross pair meets at pure r0 -> 1.0.
    y, leaf = samples_from_histogram(tree, [[2, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 2]])
    assert dendrogram_purity(tree, y, leaf, 3) == pytest.approx(1.0)
    # Class 0 split over r00/r10: its 4 cross pairs meet at the root with share 4/8.
    # P = 6 + 1 + 1 = 8; leaves give 1 each (4), root gives 4 * 1/2 = 2 -> 6/8.
    y, leaf = samples_from_histogram(tree, [[2, 0, 0], [0, 2, 0], [2, 0, 0], [0, 0, 2]])
    assert dendrogram_purity(tree, y, leaf, 3) == pytest.approx(0.75)


def test_dendrogram_purity_matches_brute_force_on_random_assignments():
    rng = np.random.default_rng(1)
    tree = Tree.complete(1).attach("r0").attach("r01").attach("r1")
    n_leaves = len(tree.leaves())
    for _ in range(5):
        y = rng.integers(0, 3, 40)
        leaf = np.where(rng.random(40) < 0.6, y % n_leaves, rng.integers(0, n_leaves, 40))
        assert dendrogram_purity(tree, y, leaf, 3) == pytest.approx(brute_force_dendrogram_purity(tree, y, leaf))


def test_pass_through_node_forwards_its_childs_counts():
    pruned = Tree.complete(2).prune("r11")  # r1 becomes pass-through above leaf r10
    assert pruned.kind("r1") == "passthrough"
    assert pruned.leaves() == ["r00", "r01", "r10"]
    collapsed = Tree(["r", "r0", "r1", "r00", "r01"])  # r10 moved up to stand as leaf r1
    assert collapsed.leaves() == ["r1", "r00", "r01"]
    to_collapsed = np.array([1, 2, 0])  # r00->r00, r01->r01, r10->r1

    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 60)
    leaf = rng.integers(0, 3, 60)
    dp_pruned = dendrogram_purity(pruned, y, leaf, 4)
    assert dp_pruned == pytest.approx(dendrogram_purity(collapsed, y, to_collapsed[leaf], 4))
    assert dp_pruned == pytest.approx(brute_force_dendrogram_purity(pruned, y, leaf))
    assert leaf_purity(pruned, y, leaf, 4) == pytest.approx(leaf_purity(collapsed, y, to_collapsed[leaf], 4))


def test_clustering_report_is_json_ready_and_complete():
    tree = Tree.complete(1)
    y = np.array([0, 0, 1, 1, 1])
    leaf = np.array([0, 0, 1, 1, 0])
    report = clustering_report(tree, y, leaf, 2)
    assert set(report) == {"acc", "nmi", "ari", "leaf_purity", "dendrogram_purity", "leaf_histograms"}
    assert report["acc"] == pytest.approx(4 / 5)
    assert report["leaf_histograms"] == [[2, 1], [0, 2]]
    json.dumps(report)


# ---- pixel baselines ------------------------------------------------------------------------------

def blob_images(n_per_class=50, seed=0):
    """Three classes of 1x4x4 uint8 images at well-separated grey levels."""
    rng = np.random.default_rng(seed)
    levels = np.array([30, 128, 220])
    y = np.repeat(np.arange(3), n_per_class)
    x = levels[y][:, None, None, None] + rng.integers(-10, 11, (len(y), 1, 4, 4))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.uint8), y[perm]


def test_pixel_baselines_separate_trivial_blobs():
    x, y = blob_images()
    res = pixel_baselines(x, y, n_clusters=3, seed=0)
    assert res["kmeans"]["acc"] > 0.95
    assert res["ward"]["acc"] > 0.95
    assert "ward_subset" not in res
    assert set(res["kmeans"]) == {"acc", "nmi", "ari", "seconds"} and res["ward"]["seconds"] >= 0


def test_pixel_baselines_subsample_ward_and_say_so():
    x, y = blob_images()
    res = pixel_baselines(x, y, n_clusters=3, seed=0, max_ward=60)
    assert res["ward_subset"] == 60
    assert res["ward"]["acc"] > 0.95


def test_pixel_baselines_reject_float_images():
    x, y = blob_images()
    with pytest.raises(ValueError, match="uint8"):
        pixel_baselines(x.astype(np.float32), y, n_clusters=3)
