"""Reading the user's own images: folder and arrays datasets, conversion, splits, bad input.

Every file is written by the tests (user_images.py); nothing is trained here (test_user_runs.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from structgen.config import ConfigError, load_config
from structgen.data import DataError, load_split
from structgen.data.run_data import load_run_data
from user_images import (CIFAR_JPEG, corrupt_jpeg, cifar_tree, digits_npz, digits_pngs, mixed_folder)

needs_cifar = pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason=f"{CIFAR_JPEG} absent")


def _cfg(path, *extra, dataset="folder"):
    return load_config(None, [f"data.dataset={dataset}", f"data.path={path}", *extra])


def _data(path, *extra, dataset="folder"):
    return load_run_data(_cfg(path, *extra, dataset=dataset))


@needs_cifar
def test_class_folder_tree_gives_labels_and_a_seeded_stratified_split(tmp_path):
    root = cifar_tree(tmp_path / "cifar")
    data = _data(root, "data.channels=3", "data.image_size=32")
    assert data.train.class_names == ["airplane", "cat", "ship"] and data.labelled
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == np.uint8
    assert len(data.train) + len(data.test) == 36
    assert np.bincount(data.test.labels).tolist() == [2, 2, 2]          # round(12 * 0.2) per class
    assert not set(data.train.sources) & set(data.test.sources)
    # The JPEG pixels arrive unchanged at their own size and mode.
    from PIL import Image
    first = data.train.sources[0]
    assert np.array_equal(data.train.images[0], np.asarray(Image.open(first)).transpose(2, 0, 1))
    again = _data(root, "data.channels=3", "data.image_size=32")
    assert again.train.sources == data.train.sources
    assert _cfg(root, "data.channels=3", "data.image_size=32").model.encoder == "cnn2"


@needs_cifar
def test_train_and_test_folders_are_the_splits(tmp_path):
    cifar_tree(tmp_path / "d" / "train", per_class=5)
    cifar_tree(tmp_path / "d" / "test", classes=("cat", "ship"), per_class=2)
    data = _data(tmp_path / "d", "data.channels=3", "data.image_size=16")
    assert len(data.train) == 15 and len(data.test) == 4
    assert data.test.class_names == ["airplane", "cat", "ship"]
    assert sorted(set(data.test.labels.tolist())) == [1, 2]
    assert data.test.images.shape[1:] == (3, 16, 16)


def test_flat_png_folder_is_unlabelled_and_ignores_hidden_and_other_files(tmp_path, capsys):
    root = digits_pngs(tmp_path / "pngs")
    data = _data(root)
    assert not data.labelled and data.num_classes == 0
    assert (data.train.labels == -1).all() and len(data.train) + len(data.test) == 60
    assert data.train.images.shape[1:] == (1, 28, 28)
    assert "ignored: 1 hidden, 1 non-image files" in capsys.readouterr().err
    assert not any(p.name.startswith(".") or p.suffix == ".txt" for p in map(__import__("pathlib").Path,
                                                                            data.train.sources))


def test_npz_arrays_in_every_layout_and_dtype(tmp_path):
    from user_images import digits_arrays

    images, labels = digits_arrays(60)
    base = _data(digits_npz(tmp_path / "d.npz"), dataset="arrays")
    assert base.labelled and base.train.class_names == [str(k) for k in range(10)]
    assert base.train.images.shape[1:] == (1, 28, 28)
    for name, arr in (("nhwc", images[..., None]), ("nchw", images[:, None]), ("float", images / 255.0)):
        other = _data(digits_npz(tmp_path / f"{name}.npz", images=arr), dataset="arrays")
        assert np.array_equal(other.train.images, base.train.images), name
    rgb = _data(digits_npz(tmp_path / "rgb.npz", images=np.repeat(images[..., None], 3, -1)), "data.channels=3",
                "data.image_size=16", dataset="arrays")
    assert rgb.train.images.shape[1:] == (3, 16, 16)
    unlabelled = _data(digits_npz(tmp_path / "u.npz", labels=None, class_names=None), dataset="arrays")
    assert not unlabelled.labelled


def test_idx_file_by_path(tmp_path):
    import gzip
    import struct

    from user_images import digits_arrays

    images, labels = digits_arrays(40)
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(gzip.compress(
        struct.pack(">4i", 2051, 40, 8, 8) + images.tobytes()))
    (tmp_path / "x-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
        struct.pack(">2i", 2049, 40) + labels.astype(np.uint8).tobytes()))
    data = _data(tmp_path / "x-images-idx3-ubyte.gz", dataset="arrays")
    assert data.labelled and len(data.train) + len(data.test) == 40
    assert sorted(np.concatenate([data.train.labels, data.test.labels]).tolist()) == sorted(labels.tolist())


def test_idx_labels_read_are_the_labels_fingerprinted_and_the_named_file_is_read(tmp_path):
    import gzip
    import struct

    from user_images import digits_arrays

    images, labels = digits_arrays(40)
    idx3 = lambda n: struct.pack(">4i", 2051, n, 8, 8) + images[:n].tobytes()  # noqa: E731
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx3(40)))
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, 40) + labels.astype(np.uint8).tobytes())
    cfg = _cfg(tmp_path / "x-images-idx3-ubyte.gz", dataset="arrays")
    assert load_run_data(cfg).labelled
    assert cfg.data.fingerprint.startswith("2 files, ")     # the plain labels file is part of the data
    # Naming the plain images file reads it, not the (now shorter) .gz copy beside it.
    (tmp_path / "x-images-idx3-ubyte").write_bytes(idx3(40))
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx3(30)))
    data = _data(tmp_path / "x-images-idx3-ubyte", dataset="arrays")
    assert data.labelled and len(data.train) + len(data.test) == 40


def test_mixed_sizes_and_modes_convert_to_one_shape(tmp_path):
    root = mixed_folder(tmp_path / "mixed")
    for channels, side in ((1, 28), (3, 32)):
        data = _data(root, f"data.channels={channels}", f"data.image_size={side}", "data.test_fraction=0.25")
        assert len(data.train) + len(data.test) == 8
        assert data.train.images.shape[1:] == (channels, side, side)
    # a transparent PNG is composited onto white, not black
    from PIL import Image
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(root / "clear.png")
    data = _data(root, "data.labels=none", "data.test_fraction=0.25")
    everything = dict(zip(data.train.sources + data.test.sources, list(data.train.images) + list(data.test.images)))
    assert (everything[str(root / "clear.png")] == 255).all()


@needs_cifar
def test_corrupt_jpeg_is_named_or_skipped(tmp_path, capsys):
    root = cifar_tree(tmp_path / "c", per_class=6)
    bad = corrupt_jpeg(root / "cat" / "broken.jpg")
    with pytest.raises(DataError, match=f"{bad}: cannot decode image .*on_bad_image=skip"):
        _data(root, "data.channels=3", "data.image_size=32")
    data = _data(root, "data.channels=3", "data.image_size=32", "data.on_bad_image=skip")
    assert len(data.train) + len(data.test) == 18
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and "skipped 1 unreadable image(s) of 19" in err


@needs_cifar
def test_bad_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _data(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files inside"):
        _data(tmp_path / "empty")
    one = digits_pngs(tmp_path / "one", n=1)
    with pytest.raises(DataError, match="only 1 image"):
        _data(one)
    root = cifar_tree(tmp_path / "c", per_class=3)
    (root / "dog").mkdir()
    with pytest.raises(DataError, match=f"class folder {root / 'dog'} holds no images"):
        _data(root, "data.channels=3", "data.image_size=32")
    with pytest.raises(DataError, match="60 images but 'labels' has shape \\(59,\\)"):
        _data(digits_npz(tmp_path / "m.npz", labels=np.zeros(59, dtype=np.int64)), dataset="arrays")
    with pytest.raises(DataError, match="is a file; use data.dataset=arrays"):
        _data(tmp_path / "m.npz")
    with pytest.raises(ConfigError, match="needs data.path"):
        load_config(None, ["data.dataset=folder"])


def test_nothing_is_written_into_the_data_folder(tmp_path):
    root = digits_pngs(tmp_path / "pngs")
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))
    _data(root)
    load_split("folder", "test", data_cfg=_cfg(root).data)
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before


def test_fingerprint_follows_the_files(tmp_path):
    root = digits_pngs(tmp_path / "pngs")
    cfg = _cfg(root)
    load_run_data(cfg)
    first = cfg.data.fingerprint
    assert first.startswith("60 files, ")
    (root / "digit_000.png").write_bytes((root / "digit_001.png").read_bytes())
    cfg2 = _cfg(root)
    load_run_data(cfg2)
    assert cfg2.data.fingerprint != first and cfg2.data.fingerprint.startswith("60 files, ")
