"""Scores of generated images: the judging classifier, per-leaf purity and the
classifier-Fréchet distance (CFD)."""
import numpy as np
import pytest
import torch
from torch import nn

from structgen.cli import EXIT_BAD_INPUT, main
from structgen.data import load_split
from structgen.scoring.augment import degrade, gaussian_blur, random_crop
from structgen.scoring.classifier import SPLIT_SEED, SmallResNet, load_classifier, train_classifier
from structgen.scoring.frechet import (FeatureStats, classifier_features, classifier_frechet_distance,
                                       frechet_distance, frechet_distance_from_stats, reference_stats)
from structgen.scoring.images import as_unit_images
from structgen.scoring.leaf_agreement import leaf_majority_classes, majority_agreement, per_leaf_agreement
from structgen.scoring.purity import generation_purity, leaf_class_histograms
from structgen.errors import CheckpointError


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # These models are tiny; on a 2-core machine shared with other jobs, two spinning OpenMP
    # threads made this file 2-10x slower than one (measured: 76 s vs 18-35 s).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- Fréchet distance against closed forms ---------------------------------------------------
def test_frechet_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_a_shifted_set_is_the_squared_mean_shift():
    feats = np.random.default_rng(1).normal(size=(400, 6)) @ np.diag([1, 2, 3, 0.5, 1, 4])
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert frechet_distance(feats, feats + shift) == pytest.approx(shift @ shift, rel=1e-6)


def test_frechet_with_diagonal_covariances_matches_the_hand_formula():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    # |Δμ|² + Σ (σa² + σb² − 2 σa σb) = 5 + (1 + 1 + 4) = 11
    d = frechet_distance_from_stats(FeatureStats(mu_a, np.diag(var_a), 10), FeatureStats(mu_b, np.diag(var_b), 10))
    assert d == pytest.approx(11.0, rel=1e-9)


def test_frechet_of_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40000, 2)) * [1.0, 2.0]
    b = rng.normal(size=(40000, 2)) * [3.0, 1.0] + [2.0, 0.0]
    expected = 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_survives_singular_covariances():
    # Fewer samples than dimensions: rank-deficient covariances, sqrtm gets the eps·I fallback.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 1.0
    same, different = frechet_distance(a, a), frechet_distance(a, b)
    assert np.isfinite(same) and np.isfinite(different)
    assert same < 1e-3 and different > 10.0


def test_frechet_rejects_mismatched_or_too_few_features():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((4, 3)) + np.arange(4)[:, None], np.zeros((4, 2)) + np.arange(4)[:, None])
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.ones((1, 3)), np.ones((5, 3)))


# ---- purity ------------------------------------------------------------------------------------
def test_generation_purity_on_hand_made_histograms():
    hist = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert generation_purity(hist, [0.5, 0.25, 0.25]) == pytest.approx(0.5 * 1 + 0.25 * 0.5 + 0.25 * 0.5)
    # Raw counts and unnormalised weights give the same number.
    assert generation_purity(hist * [[10], [4], [20]], [2, 1, 1]) == pytest.approx(0.75)
    assert generation_purity(hist, [0, 1, 0]) == pytest.approx(0.5)
    # A leaf nobody reaches may have no samples at all.
    assert generation_purity([[0, 0], [3, 1]], [0.0, 1.0]) == pytest.approx(0.75)


def test_generation_purity_rejects_bad_inputs():
    with pytest.raises(ValueError, match="empty histogram"):
        generation_purity([[0, 0], [1, 0]], [0.5, 0.5])
    with pytest.raises(ValueError, match="len\\(leaf_weights\\)"):
        generation_purity([[1, 0], [1, 0]], [1.0])
    with pytest.raises(ValueError, match="sum to 0"):
        generation_purity([[1, 0]], [0.0])


class BrightnessClassifier(nn.Module):
    """Stub judge: class = round(2 · mean pixel), so classes are set by hand-made images."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return nn.functional.one_hot((x.mean((1, 2, 3)) * 2).round().long(), 3).float() + self.dummy


def test_leaf_class_histograms_count_each_leafs_predictions_after_clamping():
    imgs = torch.zeros(4, 2, 1, 6, 6)          # leaf 0: black -> class 0
    imgs[:2, 1] = 5.0                          # leaf 1: overbright, clamped to white -> class 2
    imgs[2:, 1] = 0.5                          # leaf 1: grey -> class 1
    hist = leaf_class_histograms(BrightnessClassifier(), imgs, num_classes=3, batch_size=3)
    np.testing.assert_allclose(hist, [[1, 0, 0], [0, 0.5, 0.5]])
    u8 = (imgs.clamp(0, 1) * 255).to(torch.uint8)
    np.testing.assert_allclose(leaf_class_histograms(BrightnessClassifier(), u8, 3), hist)
    with pytest.raises(ValueError, match="3 outputs"):
        leaf_class_histograms(BrightnessClassifier(), imgs, num_classes=10)
    with pytest.raises(ValueError, match="N x L x C x H x W"):
        leaf_class_histograms(BrightnessClassifier(), imgs[0], num_classes=3)


class BrightnessRouter(BrightnessClassifier):
    """Stub TreeVAE for routing: leaf = round(2 · mean pixel), of 3 leaves."""

    class tree:
        @staticmethod
        def leaves():
            return ["r0", "r10", "r11"]

    def predict(self, x):
        return self(x)


def test_leaf_majority_classes_and_agreement_by_hand():
    images = torch.zeros(6, 1, 4, 4)
    images[2:5] = 0.5                          # three images routed to leaf 1
    labels = np.array([2, 2, 1, 1, 0, 0])      # leaf 0 holds labels 2, 2; leaf 1 holds 1, 1, 0; leaf 2 none
    majority = leaf_majority_classes(BrightnessRouter(), images, labels, num_classes=3, batch_size=4)
    np.testing.assert_array_equal(majority, [2, 1, -1])
    hist = np.array([[0.25, 0.0, 0.75], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(per_leaf_agreement(hist, majority), [0.75, 0.5, np.nan])
    # Leaf 2 has no real class: left out, its weight with it; a pure leaf of the wrong class scores 0.
    assert majority_agreement(hist, majority, [0.5, 0.25, 0.25]) == pytest.approx((0.5 * 0.75 + 0.25 * 0.5) / 0.75)
    assert majority_agreement([[1, 0, 0], [0, 1, 0], [1, 0, 0]], majority, [1, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="one label per image"):
        leaf_majority_classes(BrightnessRouter(), images, labels[:5], num_classes=3)
    with pytest.raises(ValueError, match="must lie in"):
        leaf_majority_classes(BrightnessRouter(), images, labels + 1, num_classes=3)
    with pytest.raises(ValueError, match="no leaf with a real class"):
        majority_agreement(hist, majority, [0, 0, 1])


def test_images_are_clamped_and_scaled():
    x = torch.tensor([-0.5, 0.25, 1.5]).view(1, 1, 1, 3)
    assert as_unit_images(x).flatten().tolist() == [0.0, 0.25, 1.0]
    assert as_unit_images(np.full((1, 1, 1, 2), 255, np.uint8)).flatten().tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="NaN"):
        as_unit_images(torch.full((1, 1, 2, 2), float("nan")))


def test_random_crop_shifts_each_image_by_at_most_pad():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0                               # one bright pixel in the centre
    out = random_crop(x, pad=2, g=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1)  # content moved, not lost
    where = out.flatten(1).argmax(1)
    dy, dx = where // 9 - 4, where % 9 - 4
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 5   # offsets differ between images


def test_gaussian_blur_spreads_a_point_by_each_images_own_sigma():
    x = torch.zeros(3, 2, 15, 15)
    x[:, :, 7, 7] = 1.0
    out = gaussian_blur(x, torch.tensor([0.0, 0.8, 2.0]))
    assert torch.allclose(out.sum((2, 3)), torch.ones(3, 2), atol=1e-5)     # mass kept (point far from edges)
    assert torch.allclose(out[0], x[0], atol=1e-6)                          # sigma 0: unchanged
    peaks = out[:, 0, 7, 7]
    assert peaks[0] > peaks[1] > peaks[2]                                   # wider sigma, lower peak
    assert torch.allclose(out[:, 0], out[:, 1])                             # every channel alike


def test_degrade_blurs_and_hazes_some_images_and_stays_in_range():
    x = torch.zeros(400, 1, 12, 12)
    x[:, :, 4:8, 4:8] = 1.0
    out = degrade(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    hazed = out[:, 0, 0, 0] > 0.01                                          # grey background
    blurred = (out[:, 0, 4, 4] < 0.99 * out[:, 0, 5:7, 5:7].amax((1, 2))) & ~hazed
    untouched = (out == x).flatten(1).all(1)
    assert 0.35 < hazed.float().mean() < 0.6                                # about a half
    assert 0.15 < untouched.float().mean() < 0.35                           # neither: about a quarter
    assert blurred.any()


# ---- the classifier ------------------------------------------------------------------------------
def test_small_resnet_shape_and_size():
    for channels, side in ((1, 28), (3, 32)):
        model = SmallResNet(channels, 10)
        n_params = sum(p.numel() for p in model.parameters())
        assert 100_000 <= n_params <= 300_000
        x = torch.rand(5, channels, side, side)
        assert model(x).shape == (5, 10)                 # one output per class, not 1000 (§8.14)
        assert model.features(x).shape == (5, model.feature_dim)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "digits.pt"
    path, acc = train_classifier("digits", epochs=2, batch_size=64, out=out, progress=False)
    return path, acc


def test_classifier_learns_digits(digits_classifier):
    _, acc = digits_classifier
    assert acc > 0.90


def test_classifier_round_trip(digits_classifier):
    path, acc = digits_classifier
    model, ckpt = load_classifier(path, expect_dataset="digits", expect_shape=(1, 28, 28))
    assert not model.training and ckpt["test_accuracy"] == acc
    assert ckpt["class_names"] == [str(d) for d in range(10)] and tuple(ckpt["image_shape"]) == (1, 28, 28)
    test = load_split("digits", "test", seed=SPLIT_SEED)
    x = torch.from_numpy(test.images).float() / 255
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    assert (pred == test.labels).mean() == pytest.approx(acc)   # same weights, same normalisation


def test_loading_fails_clearly(digits_classifier, tmp_path):
    path, _ = digits_classifier
    with pytest.raises(CheckpointError, match="trained on 'digits'.*'mnist'"):
        load_classifier(path, expect_dataset="mnist")
    with pytest.raises(CheckpointError, match=r"shape \(1, 28, 28\), got \(3, 32, 32\)"):
        load_classifier(path, expect_shape=(3, 32, 32))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable"):
        load_classifier(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "structgen.treevae-checkpoint/1", "weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a structgen classifier"):
        load_classifier(foreign)
    with pytest.raises(CheckpointError, match="not found.*train-classifier --dataset mnist"):
        load_classifier(tmp_path / "missing.pt", expect_dataset="mnist")


def test_classifier_frechet_distance_orders_sets_sensibly(digits_classifier):
    model, _ = load_classifier(digits_classifier[0])
    test = load_split("digits", "test", seed=SPLIT_SEED).images
    train = load_split("digits", "train", seed=SPLIT_SEED).images
    feats = classifier_features(model, test)
    assert feats.shape == (len(test), model.feature_dim) and feats.dtype == np.float64
    noise = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    real = classifier_frechet_distance(model, train[:300], "digits")
    fake = classifier_frechet_distance(model, noise, "digits")
    assert classifier_frechet_distance(model, test, "digits") == pytest.approx(0.0, abs=1e-6)
    assert 0 < real < fake
    assert reference_stats(model, "digits") is reference_stats(model, "digits")   # cached in memory
    with pytest.raises(ValueError, match="trained on 'digits'"):
        reference_stats(model, "mnist")


def test_purity_of_class_sorted_leaves_and_the_figure(digits_classifier, tmp_path):
    from structgen.scoring.generation_figure import draw_generation_figure
    from structgen.tree.topology import Tree

    model, ckpt = load_classifier(digits_classifier[0])
    test = load_split("digits", "test", seed=SPLIT_SEED)
    by_class = {c: test.images[test.labels == c][:20] for c in (0, 1, 2, 3)}
    mixed = np.concatenate([by_class[2][:10], by_class[3][:10]])
    leaf_images = torch.from_numpy(np.stack([by_class[0], by_class[1], mixed], axis=1))  # (20, 3 leaves, ...)
    hist = leaf_class_histograms(model, leaf_images, 10)
    assert hist.shape == (3, 10) and np.allclose(hist.sum(1), 1)
    assert hist[0].argmax() == 0 and hist[1].argmax() == 1 and hist[2, [2, 3]].sum() > 0.8
    purity = generation_purity(hist, [0.25, 0.25, 0.5])
    assert 0.65 < purity < 0.8            # two pure leaves (0.5) + a half-half leaf (0.5 · 0.5)
    tree = Tree.complete(1).attach("r1")  # leaves r0, r10, r11 in BFS order
    path = draw_generation_figure(tree, leaf_images, hist, [0.25, 0.25, 0.5], tmp_path / "gen.png",
                                  class_names=ckpt["class_names"], n_show=4)
    assert path.stat().st_size > 10_000


# ---- command line ----------------------------------------------------------------------------
def test_cli_train_classifier_writes_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "c" / "digits.pt"
    assert main(["train-classifier", "--dataset", "digits", "--epochs", "1", "--out", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    _, ckpt = load_classifier(out, expect_dataset="digits")
    assert ckpt["epochs"] == 1 and 0.0 <= ckpt["test_accuracy"] <= 1.0 and ckpt["degrade"] is False
    robust = tmp_path / "c" / "digits-degrade.pt"
    assert main(["train-classifier", "--dataset", "digits", "--epochs", "1", "--degrade", "--out", str(robust)]) == 0
    assert load_classifier(robust, expect_dataset="digits")[1]["degrade"] is True


def test_cli_train_classifier_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "c" / "x.pt"
    assert main(["train-classifier", "--dataset", "mnits", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "mnist" in capsys.readouterr().err
    assert main(["train-classifier", "--dataset", "digits", "--epochs", "0", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "--epochs" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train-classifier", "--dataset", "digits", "--out", str(blocker / "x.pt")]) == EXIT_BAD_INPUT
    assert "cannot write the classifier" in capsys.readouterr().err   # refused before training


def test_the_labelled_test_split_is_the_runs_test_split_without_reading_the_training_images(monkeypatch):
    from structgen.config import load_config
    from structgen.data import run_data

    cfg = load_config("configs/mnist.yml", ["data.test_subset=300", "run.seed=5"])
    expected = run_data.load_run_data(cfg).test
    splits = []
    real = run_data.load_split
    monkeypatch.setattr(run_data, "load_split", lambda name, split, *a, **k: splits.append(split) or real(
        name, split, *a, **k))
    test = run_data.labelled_test_split(cfg)
    assert splits == ["test"]
    assert np.array_equal(test.images, expected.images) and np.array_equal(test.labels, expected.labels)
    assert run_data.labelled_test_split(load_config("configs/mnist.yml", ["data.num_clusters_data=3"])) is None


def test_the_run_test_split_keeps_the_runs_class_subset():
    """Unlike labelled_test_split, run_test_split answers with data.num_clusters_data too: the
    run's own test images, relabelled as the run sees them."""
    from structgen.config import load_config
    from structgen.data import run_data

    cfg = load_config("configs/mnist.yml", ["data.num_clusters_data=3", "data.test_subset=200", "run.seed=5"])
    test, expected = run_data.run_test_split(cfg), run_data.load_run_data(cfg).test
    assert np.array_equal(test.images, expected.images) and np.array_equal(test.labels, expected.labels)
    assert set(np.unique(test.labels)) <= {0, 1, 2}
