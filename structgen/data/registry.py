"""Datasets by name: one call turns a name, a split and a data folder into uint8 arrays.

Nothing is downloaded and nothing is cached on disk. ``digits`` and ``synthetic`` need no
files; ``mnist``, ``fmnist`` and ``cifar10`` read the standard files under ``data_dir``
(layouts in README of the shared data folder and in ``idx.py`` / ``cifar10.py``). ``folder`` and
``arrays`` are the user's own images at ``data.path`` (``user_data.py``), converted to
``data.channels`` x ``data.image_size`` x ``data.image_size``. ``beton`` reads the ``.beton``
files ``<data.path>-train.beton`` and ``<data.path>-test.beton`` (as ``prepare-data --format
ffcv`` names them) on demand, without loading them: a set larger than memory (``beton_images.py``).
"""
from __future__ import annotations

import os

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import structgen
from structgen.data import cifar10, digits, idx, synthetic
from structgen.errors import DataError
from structgen.data.splits import check_fraction, take_split
from structgen.data.summary import format_summary, summarize

__all__ = ["DATASETS", "SPLITS", "ImageSet", "dataset_shape", "resolve_data_dir", "load_split",
           "summarize", "format_summary"]

DATASETS = ("digits", "mnist", "fmnist", "cifar10", "synthetic", "folder", "arrays", "beton")
USER_DATASETS = ("folder", "arrays")     # shape and files come from the data config
SPLITS = ("train", "test")

_SHAPES = {"digits": (1, 28, 28), "mnist": (1, 28, 28), "fmnist": (1, 28, 28),
           "synthetic": (1, 28, 28), "cifar10": (3, 32, 32)}
_IDX_FOLDERS = {"mnist": "mnist", "fmnist": "fashion-mnist"}
_CLASS_NAMES = {
    "digits": [str(d) for d in range(10)],
    "mnist": [str(d) for d in range(10)],
    "fmnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "synthetic": synthetic.CLASS_NAMES,
}


@dataclass
class ImageSet:
    images: np.ndarray          # uint8, N x C x H x W
    labels: np.ndarray          # int64, N
    name: str
    split: str                  # "train" or "test"
    class_names: list[str]
    superclass: np.ndarray | None = None  # synthetic only: coarse label of each image
    sources: list[str] | None = None      # folder / arrays: the file (or "file#index") of each image
    fingerprint: str | None = None        # folder / arrays: hash of the data files (user_data.py)

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.name}/{self.split}: images must be uint8 NCHW, got "
                            f"{self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{self.name}/{self.split}: {len(self.images)} images but labels of "
                            f"shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        """False for unlabelled user data: labels are then all -1 and class_names is empty."""
        return bool(self.class_names)


def _unknown(kind: str, value: str, valid: tuple[str, ...]) -> DataError:
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return DataError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}{hint}")


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise _unknown("dataset", name, DATASETS)


def dataset_shape(name: str, data_cfg=None) -> tuple[int, int, int]:
    """(C, H, W) of every image of dataset ``name``; for folder / arrays the converted shape
    that ``data_cfg`` (data.channels, data.image_size) asks for, without reading any file."""
    _check_name(name)
    if name in USER_DATASETS:
        if data_cfg is None:
            raise DataError(f"the shape of dataset {name!r} comes from data.channels and data.image_size: "
                            f"pass the data config")
        return (int(data_cfg.channels), int(data_cfg.image_size), int(data_cfg.image_size))
    if name == "beton":
        from structgen.data.ffcv_files import check_beton

        return tuple(check_beton(beton_split_path(data_cfg, "train"))["shape"])
    return _SHAPES[name]


def beton_split_path(data_cfg, split: str) -> Path:
    """``<data.path>-<split>.beton``: the file dataset ``beton`` reads for ``split``."""
    if data_cfg is None or not data_cfg.path:
        raise DataError("dataset beton needs data.path: the files' common prefix, e.g. data/ffcv/mnist for "
                        "data/ffcv/mnist-train.beton and data/ffcv/mnist-test.beton")
    return Path(f"{Path(data_cfg.path).expanduser()}-{split}.beton")


def _read_beton_split(data_cfg, split: str) -> ImageSet:
    from structgen.data.beton_images import BetonImages

    images = BetonImages(beton_split_path(data_cfg, split), data_cfg.memory_limit_gb)
    labels = images.labels
    names = images.meta.get("class_names")
    if names is None:                      # a file written before sidecars named the classes
        names = [str(k) for k in range(int(labels.max()) + 1)] if (labels >= 0).any() else []
    return ImageSet(images, labels, "beton", split, list(names), fingerprint=f"beton {images.fingerprint}")


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The folder holding the dataset folders.

    None: $STRUCTGEN_DATA_DIR when set; else ``../shared/data`` next to the current folder or
    next to the repository when it exists; else ``./data``. An explicit path must exist.
    """
    if data_dir is None:
        data_dir = os.environ.get("STRUCTGEN_DATA_DIR")
    if data_dir is None:
        repo = Path(structgen.__file__).resolve().parents[1]
        for base in (Path.cwd(), repo):
            shared = base.parent / "shared" / "data"
            if shared.is_dir():
                return shared
        return Path.cwd() / "data"
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"data_dir {str(path)!r} does not exist or is not a folder")
    return path


def load_split(name: str, split: str, data_dir: str | Path | None = None, *, seed: int = 0,
               test_fraction: float = 0.2, data_cfg=None) -> ImageSet:
    """One split of one dataset as uint8 arrays.

    ``seed`` and ``test_fraction`` matter only where a split has to be made: digits (one pool of
    1797 images), a CIFAR-10 copy that holds only one split, the synthetic generator, and user
    data without train/ and test/ folders. folder / arrays need ``data_cfg`` (the data section).
    """
    _check_name(name)
    if split not in SPLITS:
        raise _unknown("split", split, SPLITS)
    check_fraction(test_fraction)
    if name in USER_DATASETS:
        from structgen.data.user_data import read_user_split

        if data_cfg is None:
            raise DataError(f"dataset {name!r} is read from data.path: pass the data config")
        return read_user_split(data_cfg, split, seed)
    if name == "beton":
        return _read_beton_split(data_cfg, split)
    superclass = None
    class_names = _CLASS_NAMES.get(name)
    if name == "digits":
        images, labels = take_split(*digits.read_digits(), split, test_fraction, seed)
    elif name == "synthetic":
        images, labels, superclass = synthetic.read_synthetic(split, seed)
    elif name == "cifar10":
        images, labels, class_names = cifar10.read_cifar10(resolve_data_dir(data_dir), split,
                                                           seed, test_fraction)
    else:
        folder = resolve_data_dir(data_dir) / _IDX_FOLDERS[name]
        _, h, w = _SHAPES[name]
        images, labels = idx.read_idx_split(folder, split, name, (h, w), len(class_names))
    return ImageSet(images, labels, name, split, list(class_names), superclass)
