"""Dataset readers on the real shared files, and on corrupted copies of them.

Expected counts and pixel statistics come from ../shared/data/README.md, which was written
from an independent decode of the official files.
"""
from __future__ import annotations

import gzip
import io
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import structgen
from structgen.data import (DATASETS, DataError, dataset_shape, format_summary, load_split,
                            resolve_data_dir, summarize)

SHARED = Path(structgen.__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} absent")

# From the shared data README ("Checks run on the decoded data").
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _hist(labels, k=10):
    return np.bincount(labels, minlength=k).tolist()


def _row_keys(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1)}


# ---- real files -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_train():
    return load_split("mnist", "train", SHARED)


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("mnist", "test", SHARED)


@pytest.fixture(scope="module")
def cifar_splits():
    return {s: load_split("cifar10", s, SHARED, seed=3) for s in ("train", "test")}


@needs_shared
def test_mnist_train_matches_readme(mnist_train):
    ds = mnist_train
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    assert _hist(ds.labels) == MNIST_TRAIN_COUNTS
    s = summarize(ds)
    assert s["mean"] * 255 == pytest.approx(33.318, abs=0.01)
    assert s["std"] * 255 == pytest.approx(78.567, abs=0.01)
    assert s["shape"] == [1, 28, 28] and s["count"] == 60000
    assert list(s["counts_per_class"].values()) == MNIST_TRAIN_COUNTS


@needs_shared
def test_mnist_test_matches_readme(mnist_test):
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert _hist(mnist_test.labels) == MNIST_TEST_COUNTS
    assert mnist_test.images.mean() == pytest.approx(33.791, abs=0.01)
    text = format_summary(summarize(mnist_test))
    assert "mnist/test" in text and "10000" in text and "1135" in text


@needs_shared
@pytest.mark.parametrize("split,n,mean", [("train", 60000, 72.940), ("test", 10000, 73.147)])
def test_fmnist_matches_readme(split, n, mean):
    ds = load_split("fmnist", split, SHARED)
    assert ds.images.shape == (n, 1, 28, 28)
    assert _hist(ds.labels) == [n // 10] * 10
    assert ds.images.mean() == pytest.approx(mean, abs=0.01)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


@needs_shared
def test_cifar_jpeg_tree_derives_disjoint_split(cifar_splits):
    train, test = cifar_splits["train"], cifar_splits["test"]
    assert train.images.shape == (8000, 3, 32, 32) and test.images.shape == (2000, 3, 32, 32)
    assert _hist(train.labels) == [800] * 10 and _hist(test.labels) == [200] * 10
    assert train.class_names[:3] == ["airplane", "automobile", "bird"]
    assert not (_row_keys(train.images) & _row_keys(test.images))
    # Together they are the whole folder: its per-channel means are in the README.
    both = np.concatenate([train.images, test.images])
    means = both.reshape(10000, 3, -1).mean(axis=(0, 2))
    np.testing.assert_allclose(means, [125.99, 123.69, 114.85], atol=0.02)


@needs_shared
def test_cifar_split_is_seeded(cifar_splits):
    again = load_split("cifar10", "test", SHARED, seed=3)
    np.testing.assert_array_equal(again.images, cifar_splits["test"].images)
    other = load_split("cifar10", "test", SHARED, seed=4)
    assert _row_keys(other.images) != _row_keys(cifar_splits["test"].images)


def test_digits_split_is_stratified_seeded_and_disjoint():
    train = load_split("digits", "train", seed=1)
    test = load_split("digits", "test", seed=1)
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=10)
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and train.images.min() == 0
    test_hist = np.bincount(test.labels, minlength=10) / np.bincount(train.labels, minlength=10)
    assert np.all(np.abs(test_hist - 0.25) < 0.03)  # every class ~20/80
    assert not (_row_keys(train.images) & _row_keys(test.images))
    np.testing.assert_array_equal(load_split("digits", "test", seed=1).images, test.images)
    assert not np.array_equal(load_split("digits", "test", seed=2).labels, test.labels)
    assert len(load_split("digits", "test", test_fraction=0.5)) == pytest.approx(898, abs=10)


def test_synthetic_hierarchy_and_determinism():
    train = load_split("synthetic", "train", seed=0)
    test = load_split("synthetic", "test", seed=0)
    assert train.images.shape == (2000, 1, 28, 28) and len(test) == 500
    assert _hist(train.labels, 4) == [500] * 4 and _hist(test.labels, 4) == [125] * 4
    np.testing.assert_array_equal(train.superclass, train.labels // 2)
    np.testing.assert_array_equal(load_split("synthetic", "train", seed=0).images, train.images)
    assert not np.array_equal(load_split("synthetic", "train", seed=1).images, train.images)
    assert not np.array_equal(train.images[:500], test.images)
    # The hierarchy must be visible in pixel space: class means of one superclass are closer to
    # each other than to any class mean of the other superclass.
    means = np.stack([train.images[train.labels == c].astype(float).mean(0).ravel() for c in range(4)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    within = max(dist[0, 1], dist[2, 3])
    between = min(dist[a, b] for a in (0, 1) for b in (2, 3))
    assert within < 0.75 * between
    assert min(dist[0, 1], dist[2, 3]) > 0.25 * between  # subclasses still clearly distinct
    # And plain k-means finds both levels: k=2 gives the superclasses, k=4 the classes.
    from sklearn.cluster import KMeans

    x = train.images.reshape(len(train), -1).astype(np.float32)
    for k, truth in ((2, train.superclass), (4, train.labels)):
        clusters = KMeans(k, n_init=3, random_state=0).fit_predict(x)
        joint = np.bincount(clusters * k + truth, minlength=k * k).reshape(k, k)
        assert joint.max(axis=1).sum() / len(x) > 0.95  # purity


def test_shapes_and_names():
    assert dataset_shape("cifar10") == (3, 32, 32)
    assert all(dataset_shape(n) == (1, 28, 28) for n in DATASETS if n not in ("cifar10", "folder", "arrays", "beton"))
    # the user's own images take the shape the data config converts them to
    from structgen.config.schema import DataConfig
    assert dataset_shape("folder", DataConfig(channels=3, image_size=40)) == (3, 40, 40)
    with pytest.raises(DataError, match="data.channels and data.image_size"):
        dataset_shape("arrays")
    with pytest.raises(DataError, match="did you mean 'mnist'"):
        load_split("mnsit", "train")
    with pytest.raises(DataError, match="did you mean 'test'"):
        load_split("digits", "tset")
    with pytest.raises(DataError, match="test_fraction"):
        load_split("digits", "train", test_fraction=1.0)


@needs_shared
def test_resolve_data_dir(tmp_path):
    assert resolve_data_dir(None) == SHARED
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    with pytest.raises(DataError, match="nowhere"):
        resolve_data_dir(tmp_path / "nowhere")


# ---- corrupted copies ---------------------------------------------------------------------------
IMG = "t10k-images-idx3-ubyte"
LAB = "t10k-labels-idx1-ubyte"


def _idx_images(images: np.ndarray, magic: int = 2051) -> bytes:
    n, _, h, w = images.shape
    return struct.pack(">4i", magic, n, h, w) + images.tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">2i", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture()
def small_mnist(tmp_path):
    """A valid 50-image MNIST folder (gzip) in tmp_path; returns (data_dir, images, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50)
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / f"{IMG}.gz").write_bytes(gzip.compress(_idx_images(images)))
    (folder / f"{LAB}.gz").write_bytes(gzip.compress(_idx_labels(labels)))
    return tmp_path, images, labels


def test_small_folder_roundtrip_gz_plain_and_parts(small_mnist):
    data_dir, images, labels = small_mnist
    ds = load_split("mnist", "test", data_dir)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    folder = data_dir / "mnist"
    # uncompressed copy, stored in 3 pieces
    raw = _idx_images(images)
    (folder / f"{IMG}.gz").unlink()
    for i, start in enumerate(range(0, len(raw), 15000)):
        (folder / f"{IMG}.part{i:02d}").write_bytes(raw[start:start + 15000])
    assert len(list(folder.glob("*.part*"))) == 3
    np.testing.assert_array_equal(load_split("mnist", "test", data_dir).images, images)


def _expect(data_dir, *fragments):
    with pytest.raises(DataError) as info:
        load_split("mnist", "test", data_dir)
    for f in fragments:
        assert f in str(info.value), str(info.value)
    return str(info.value)


def test_truncated_gzip(small_mnist):
    data_dir, *_ = small_mnist
    path = data_dir / "mnist" / f"{IMG}.gz"
    path.write_bytes(path.read_bytes()[:-400])
    _expect(data_dir, str(path), "truncated")


def test_flipped_bytes_in_gzip_body(small_mnist):
    data_dir, *_ = small_mnist
    path = data_dir / "mnist" / f"{LAB}.gz"
    data = bytearray(path.read_bytes())
    for i in range(20, 30):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    _expect(data_dir, str(path), "gzip")


def test_wrong_magic(small_mnist):
    data_dir, images, _ = small_mnist
    path = data_dir / "mnist" / f"{IMG}.gz"
    path.write_bytes(gzip.compress(_idx_images(images, magic=2049)))
    _expect(data_dir, str(path), "magic", "labels file")


def test_idx_payload_shorter_than_header_says(small_mnist):
    data_dir, images, _ = small_mnist
    path = data_dir / "mnist" / f"{IMG}.gz"
    path.write_bytes(gzip.compress(_idx_images(images)[:-123]))
    _expect(data_dir, str(path), "truncated: header says 50 images of 28x28 (39200 bytes) but only 39077")


def test_image_label_count_mismatch(small_mnist):
    data_dir, _, labels = small_mnist
    (data_dir / "mnist" / f"{LAB}.gz").write_bytes(gzip.compress(_idx_labels(labels[:49])))
    msg = _expect(data_dir, f"{IMG}.gz", f"{LAB}.gz")
    assert "50 images" in msg and "49 labels" in msg


def test_label_out_of_range(small_mnist):
    data_dir, _, labels = small_mnist
    bad = labels.copy()
    bad[7] = 12
    (data_dir / "mnist" / f"{LAB}.gz").write_bytes(gzip.compress(_idx_labels(bad)))
    _expect(data_dir, f"{LAB}.gz", "label 12 at index 7")


def test_missing_part(small_mnist):
    data_dir, *_ = small_mnist
    path = data_dir / "mnist" / f"{IMG}.gz"
    data = path.read_bytes()
    third = len(data) // 3 + 1
    for i in range(3):
        Path(f"{path}.part{i:02d}").write_bytes(data[i * third:(i + 1) * third])
    path.unlink()
    np.testing.assert_array_equal(load_split("mnist", "test", data_dir).images, small_mnist[1])
    Path(f"{path}.part01").unlink()
    _expect(data_dir, f"{IMG}.gz", "missing", f"{IMG}.gz.part01")


def test_missing_folder_and_file(tmp_path, small_mnist):
    with pytest.raises(DataError, match="fashion-mnist"):
        load_split("fmnist", "train", tmp_path)
    data_dir, *_ = small_mnist
    (data_dir / "mnist" / f"{LAB}.gz").unlink()
    _expect(data_dir, str(data_dir / "mnist" / f"{LAB}.gz"), "missing")
    with pytest.raises(DataError, match="cifar10-jpeg"):
        load_split("cifar10", "train", data_dir)


# ---- CIFAR-10 forms on small fakes ----------------------------------------------------------------
CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _jpeg_tree(root: Path, per_class: int = 5) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in CIFAR:
        (root / "cifar10-jpeg" / "test" / c).mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / "cifar10-jpeg" / "test" / c / f"{i:04d}.png")
    return root / "cifar10-jpeg" / "test"


def test_cifar_tree_decodes_and_splits(tmp_path):
    from PIL import Image

    test_dir = _jpeg_tree(tmp_path)
    tr = load_split("cifar10", "train", tmp_path)
    te = load_split("cifar10", "test", tmp_path)
    assert len(tr) == 40 and len(te) == 10 and _hist(te.labels) == [1] * 10
    # pixel layout: CHW with channels in RGB order, exactly as the PNG holds it
    i = int(np.flatnonzero(te.labels == 3)[0])
    png = [np.asarray(Image.open(p)) for p in sorted((test_dir / "cat").iterdir())]
    assert any(np.array_equal(te.images[i].transpose(1, 2, 0), p) for p in png)


def test_cifar_broken_and_wrong_size_images(tmp_path):
    from PIL import Image

    test_dir = _jpeg_tree(tmp_path)
    bad = test_dir / "dog" / "0002.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match="0002.jpg"):
        load_split("cifar10", "test", tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad)
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated JPEG
    with pytest.raises(DataError, match="0002.jpg"):
        load_split("cifar10", "test", tmp_path)
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(bad)
    with pytest.raises(DataError, match=r"0002\.jpg.*32x30"):
        load_split("cifar10", "test", tmp_path)


def _write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    # protocol 2, like the original Python 2 batches
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}, protocol=2))


def test_cifar_pickle_batches(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        _write_batch(folder / name, data, labels)
        batches[name] = (data, labels)
    tr = load_split("cifar10", "train", tmp_path)
    assert tr.images.shape == (20, 3, 32, 32)
    np.testing.assert_array_equal(tr.images[4, 0].ravel(), batches["data_batch_2"][0][0, :1024])  # R plane
    np.testing.assert_array_equal(tr.images[4, 2].ravel(), batches["data_batch_2"][0][0, 2048:])  # B plane
    assert tr.labels[4:8].tolist() == batches["data_batch_2"][1]
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_split("cifar10", "train", tmp_path)


def test_cifar_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    pickle.dump({b"data": Evil(), b"labels": [0]}, buf, protocol=2)
    (folder / "test_batch").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="test_batch"):
        load_split("cifar10", "test", tmp_path)
    assert (tmp_path / "victim").is_dir()
