"""Figure writers: files appear, open as images, and have the layout they promise."""
import numpy as np
import pytest
from PIL import Image

from structgen.tree import Tree
from structgen.viz import draw_tree_figure, save_grid, save_side_by_side
from structgen.viz.tree_figure import leaf_columns


def test_save_grid_size_and_parent_dirs(tmp_path):
    images = np.random.default_rng(0).random((10, 1, 8, 8)).astype(np.float32)
    path = save_grid(images, tmp_path / "deep" / "dir" / "grid.png", nrow=4, pad=2)
    with Image.open(path) as img:
        # 4 columns, ceil(10/4) = 3 rows, each tile 8 + 2 pad, plus the outer pad.
        assert img.size == (4 * 10 + 2, 3 * 10 + 2)
        assert img.mode == "L"


def test_save_grid_clips_floats_and_accepts_rgb_uint8_and_tensors(tmp_path):
    import torch

    over = np.full((1, 3, 4, 4), 7.0)  # far above 1: must clip to white, not wrap around
    with Image.open(save_grid(over, tmp_path / "clip.png", pad=0)) as img:
        assert img.mode == "RGB" and np.asarray(img).min() == 255
    rgb = np.zeros((4, 3, 5, 5), dtype=np.uint8)
    with Image.open(save_grid(rgb, tmp_path / "rgb.png", pad=1)) as img:
        assert img.size == (2 * 6 + 1, 2 * 6 + 1)  # default nrow = ceil(sqrt(4)) = 2
    t = torch.rand(3, 1, 6, 6, dtype=torch.bfloat16)
    assert save_grid(t, tmp_path / "tensor.png").exists()


def test_save_grid_rejects_wrong_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        save_grid(np.zeros((2, 2, 8, 8)), tmp_path / "bad.png")


def image_runs(row):
    """Values of the contiguous non-gutter (non-white) stretches along one pixel row."""
    inside = row != 255
    starts = np.flatnonzero(inside & ~np.r_[False, inside[:-1]])
    return row[starts]


def test_side_by_side_has_twice_the_columns_and_alternates(tmp_path):
    n, h, nrow = 6, 8, 3
    originals = np.zeros((n, 1, h, h), dtype=np.float32)  # black
    recons = np.full((n, 1, h, h), 0.5, dtype=np.float32)  # mid grey
    with Image.open(save_grid(originals, tmp_path / "o.png", nrow=nrow)) as img:
        plain = np.asarray(img)
    with Image.open(save_side_by_side(originals, recons, tmp_path / "p.png", nrow=nrow, titles=None)) as img:
        pairs = np.asarray(img)
    middle_row = lambda arr: arr[np.flatnonzero((arr != 255).any(axis=1))[h // 2]]  # noqa: E731
    middle_col = lambda arr: arr[:, np.flatnonzero((arr != 255).any(axis=0))[h // 2]]  # noqa: E731
    assert len(image_runs(middle_row(plain))) == nrow
    np.testing.assert_array_equal(image_runs(middle_row(pairs)), [0, 128] * nrow)
    # Same number of image rows: 6 images at 3 per row and 6 pairs at 3 pairs per row.
    assert len(image_runs(middle_col(pairs))) == len(image_runs(middle_col(plain))) == 2


def test_side_by_side_title_strip_sits_above_the_grid(tmp_path):
    x = np.zeros((1, 1, 4, 4), dtype=np.uint8)
    with Image.open(save_side_by_side(x, x, tmp_path / "bare.png", titles=None)) as img:
        bare = np.asarray(img)
    with Image.open(save_side_by_side(x, x, tmp_path / "titled.png")) as img:
        titled = np.asarray(img)
    header = titled.shape[0] - bare.shape[0]
    assert header > 5
    assert (titled[:header] < 128).any()  # dark text pixels in the strip
    # A 2-image grid is narrower than the title line: the canvas widens instead of clipping.
    assert titled.shape[1] > bare.shape[1]
    np.testing.assert_array_equal(titled[header:, : bare.shape[1]], bare)


def test_side_by_side_rejects_mismatched_counts(tmp_path):
    with pytest.raises(ValueError, match="same count"):
        save_side_by_side(np.zeros((3, 1, 4, 4)), np.zeros((2, 1, 4, 4)), tmp_path / "x.png")


def unbalanced_depth4_tree():
    tree = Tree.complete(1)
    for leaf in ["r0", "r00", "r000", "r1", "r10", "r01", "r11", "r001"]:
        tree = tree.attach(leaf)
    return tree


def test_in_order_layout_never_crosses_edges():
    tree = unbalanced_depth4_tree()
    assert len(tree.leaves()) == 10 and tree.max_depth() == 4
    xs = leaf_columns(tree)
    assert sorted(xs[leaf] for leaf in tree.leaves()) == list(range(10))
    for node in tree.internal():
        left, right = tree.children(node)
        left_xs = [x for p, x in xs.items() if p.startswith(left)]
        right_xs = [x for p, x in xs.items() if p.startswith(right)]
        assert max(left_xs) < min(right_xs), node
        assert xs[node] == pytest.approx((xs[left] + xs[right]) / 2)


def leaf_inputs(tree, rng, n_classes=10, rgb=False):
    leaves = tree.leaves()
    c = 3 if rgb else 1
    images = {leaf: rng.random((4, c, 8, 8)).astype(np.float32) for leaf in leaves}
    mass = dict(zip(leaves, rng.dirichlet(np.ones(len(leaves)))))
    hist = {leaf: rng.integers(0, 50, n_classes) for leaf in leaves}
    return images, mass, hist


@pytest.mark.parametrize(
    "name, tree",
    [
        ("two_leaves", Tree.complete(1)),
        ("pass_through", Tree.complete(2).prune("r11")),
        ("unbalanced10", unbalanced_depth4_tree()),
    ],
)
def test_tree_figure_writes_a_readable_png(tmp_path, name, tree):
    rng = np.random.default_rng(0)
    images, mass, hist = leaf_inputs(tree, rng, rgb=(name == "pass_through"))
    path = draw_tree_figure(tree, images, mass, hist, tmp_path / "fig" / f"{name}.png",
                            class_names=[f"class{i}" for i in range(10)], title=name)
    with Image.open(path) as img:
        w, h = img.size
        pixels = np.asarray(img.convert("L"))
    assert w >= 150 * len(tree.leaves()) and h >= 400
    assert pixels.std() > 10  # something was drawn, not a blank canvas


def test_tree_figure_grows_with_leaves_and_works_without_histograms(tmp_path):
    rng = np.random.default_rng(0)
    small, big = Tree.complete(2).prune("r11"), unbalanced_depth4_tree()
    sizes = []
    for tree in (small, big):
        images, mass, _ = leaf_inputs(tree, rng)
        del images[tree.leaves()[0]]  # a leaf with no samples draws a blank panel
        with Image.open(draw_tree_figure(tree, images, mass, None, tmp_path / f"{len(tree)}.png")) as img:
            sizes.append(img.size)
    assert sizes[1][0] > sizes[0][0] and sizes[1][1] > sizes[0][1]


def test_tree_figure_rejects_unknown_leaf_names(tmp_path):
    with pytest.raises(ValueError, match="not leaves"):
        draw_tree_figure(Tree.complete(1), {}, {"r": 1.0}, None, tmp_path / "x.png")
