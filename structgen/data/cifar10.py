"""CIFAR-10 from either of its two common on-disk forms.

1. The python pickle batches (``cifar-10-batches-py/data_batch_1..5`` = train,
   ``test_batch`` = test), unpickled with a whitelist that admits only numpy arrays, so a data
   folder cannot run code.
2. A class-folder image tree ``<root>/{train,test}/<class>/*.jpg|*.png``, decoded with Pillow.

Either form may hold only one split (the shared copy has only ``test/``). Then BOTH splits are
carved out of the one that exists with a seeded stratified split (see ``splits.py``), so train
and test stay disjoint.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from structgen.errors import DataError
from structgen.data.splits import take_split

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]
SIDE = 32
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_TEST_BATCHES = ["test_batch"]
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


# ---- pickle batches ------------------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Loads dicts/lists/ints/bytes and numpy arrays, nothing that could execute code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        # numpy 2 moved numpy.core to numpy._core; old pickles name the old place.
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as e:
        raise DataError(f"cifar10: {path}: not a readable CIFAR pickle batch "
                        f"({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"cifar10: {path}: expected a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        raise DataError(f"cifar10: {path}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DataError(f"cifar10: {path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"cifar10: {path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    # Rows are channel-major (1024 R, 1024 G, 1024 B), i.e. already C x H x W.
    return data.reshape(-1, 3, SIDE, SIDE), labels


def _read_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    missing = [str(folder / n) for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"cifar10: incomplete pickle batches in {folder}: missing {', '.join(missing)}")
    parts = [_read_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---- class-folder image tree ---------------------------------------------------------------
def _decode(path: Path):
    from PIL import Image  # deferred: only the image-tree form needs Pillow

    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            pixels = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cifar10: {path}: cannot decode image ({type(e).__name__}: {e})") from e
    if mode != "RGB" or size != (SIDE, SIDE):
        raise DataError(f"cifar10: {path}: image is {mode} {size[0]}x{size[1]} (width x height), "
                        f"expected RGB {SIDE}x{SIDE}")
    return pixels


def _class_folders(split_dir: Path) -> list[str]:
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir())  # for CIFAR-10: CLASS_NAMES order
    if not names:
        raise DataError(f"cifar10: {split_dir}: no class folders inside")
    return names


def _read_tree_split(split_dir: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        found = (sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
                 if folder.is_dir() else [])
        if not found:
            raise DataError(f"cifar10: {folder}: no .jpg/.png images (class {name!r})")
        files += found
        labels += [label] * len(found)
    images = np.empty((len(files), SIDE, SIDE, 3), dtype=np.uint8)
    for i, path in enumerate(files):  # file decoding is inherently per file; done once at load
        images[i] = _decode(path)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), np.asarray(labels, dtype=np.int64)


def _read_tree(root: Path, split: str, seed: int, test_fraction: float):
    dirs = {s: root / s for s in ("train", "test") if (root / s).is_dir()}
    if not dirs:
        raise DataError(f"cifar10: {root}: expected a train/ and/or test/ folder of class folders")
    classes = {s: _class_folders(d) for s, d in dirs.items()}
    if len(dirs) == 2 and classes["train"] != classes["test"]:
        raise DataError(f"cifar10: {root}: train/ and test/ hold different class folders: "
                        f"{classes['train']} vs {classes['test']}")
    class_names = next(iter(classes.values()))
    if len(dirs) == 2:
        return (*_read_tree_split(dirs[split], class_names), class_names)
    (only,) = dirs.values()  # one split on disk: both splits are carved out of it
    return (*take_split(*_read_tree_split(only, class_names), split, test_fraction, seed), class_names)


# ---- entry point ---------------------------------------------------------------------------
def pickle_folders(data_dir: Path) -> list[Path]:
    return [data_dir / "cifar10" / "cifar-10-batches-py", data_dir / "cifar-10-batches-py"]


def tree_folders(data_dir: Path) -> list[Path]:
    return [data_dir / "cifar10-jpeg"]


def read_cifar10(data_dir: Path, split: str, seed: int, test_fraction: float):
    """(images N x 3 x 32 x 32 uint8, labels int64, class_names) of one split."""
    for folder in pickle_folders(data_dir):
        if folder.is_dir():
            have = [names for names in (_TRAIN_BATCHES, _TEST_BATCHES) if any((folder / n).is_file() for n in names)]
            if not have:
                raise DataError(f"cifar10: {folder}: no pickle batches "
                                f"({', '.join(_TRAIN_BATCHES + _TEST_BATCHES)}) inside")
            if len(have) == 2:
                return (*_read_batches(folder, _TRAIN_BATCHES if split == "train" else _TEST_BATCHES), CLASS_NAMES)
            # one split on disk: both splits are carved out of it
            return (*take_split(*_read_batches(folder, have[0]), split, test_fraction, seed), CLASS_NAMES)
    for folder in tree_folders(data_dir):
        if folder.is_dir():
            return _read_tree(folder, split, seed, test_fraction)
    expected = [str(p) for p in pickle_folders(data_dir) + tree_folders(data_dir)]
    raise DataError(f"cifar10: no data found; expected one of: {', '.join(expected)}")
