"""The user's own images (``folder`` / ``arrays``) as the train and test ImageSets of a run.

Both splits come from one read: a run asks for train and then test, and decoding a folder of
JPEGs twice would double the start-up time, so the last read is kept in memory, keyed by
everything that shapes it, including each file's size and mtime (an edited folder is re-read).

The fingerprint (``ImageSet.fingerprint``, recorded as ``data.fingerprint`` in the run's
config) hashes every data file's relative name, size and content; a resume compares it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from structgen.errors import DataError
from structgen.data.splits import stratified_split

_CACHE: dict = {}


class FileHasher:
    """sha256 over (relative name, size, content hash) of every file fed to it, and counts."""

    def __init__(self):
        self.digest, self.files, self.bytes = hashlib.sha256(), 0, 0

    def add(self, name: str, data: bytes) -> None:
        self.digest.update(f"{name}\0{len(data)}\0".encode() + hashlib.sha256(data).digest())
        self.files += 1
        self.bytes += len(data)

    def describe(self) -> str:
        # Counts first: a resume refused on a changed fingerprint then says what kind of change it was.
        return f"{self.files} files, {self.bytes} bytes, sha256 {self.digest.hexdigest()[:16]}"


def _data_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    from structgen.data.user_arrays import data_files
    return data_files(path)


def _key(d, seed: int, path: Path) -> tuple:
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _data_files(path))
    return (d.dataset, str(path.resolve()), d.image_size, d.channels, d.labels, d.on_bad_image, d.test_fraction,
            seed, stats)


def _check_pool_size(n: int, where: str) -> None:
    if n < 2:
        raise DataError(f"{where}: only {n} image; a run needs at least 2 (one to train on, one to test on)")


def _split_pool(images, labels, names, sources, fp: str, test_fraction: float, seed: int, where: str) -> dict:
    """Train and test drawn from one pool of images (a seeded stratified split), as _CACHE holds them."""
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    if not len(train_idx) or not len(test_idx):
        raise DataError(f"{where}: {len(labels)} images are too few to hold out data.test_fraction = "
                        f"{test_fraction} for testing and keep the rest for training; add images, or make "
                        f"train/ and test/ folders")
    return {s: (images[i], labels[i], names, [sources[k] for k in i], fp)
            for s, i in (("train", train_idx), ("test", test_idx))}


def _read_folder(d, seed: int, root: Path) -> dict:
    from structgen.data.user_folder import read_part, relabel, split_folders

    if not root.is_dir():                   # read_user_split has checked that it exists
        raise DataError(f"data.path {root} is a file; use data.dataset=arrays for an .npz or idx-ubyte file")
    hasher = FileHasher()
    splits = split_folders(root)
    read = lambda folder: read_part(folder, d.image_size, d.channels, d.labels, d.on_bad_image, hasher)  # noqa: E731
    if len(splits) == 2:
        train, test = read(splits["train"]), read(splits["test"])
        names = train.class_names
        if bool(train.class_names) != bool(test.class_names):
            raise DataError(f"folder {root}: train/ and test/ must both have class folders or both be unlabelled")
        test = relabel(test, names, f"folder {splits['test']}")
        fp = hasher.describe()
        return {s: (p.images, p.labels, p.class_names, p.sources, fp) for s, p in (("train", train), ("test", test))}
    pool = read(next(iter(splits.values())) if splits else root)
    _check_pool_size(len(pool.images), f"folder {root}")
    return _split_pool(pool.images, pool.labels, pool.class_names, pool.sources, hasher.describe(), d.test_fraction,
                       seed, f"folder {root}")


def _read_arrays(d, seed: int, path: Path) -> dict:
    from structgen.data.convert import convert_array_images
    from structgen.data.user_arrays import read_arrays

    hasher = FileHasher()
    images, labels, names = read_arrays(path, hasher)
    _check_pool_size(len(images), str(path))     # before converting: labels.max() below needs an image
    images = convert_array_images(images, d.image_size, d.channels, str(path))
    if labels is None or d.labels == "none":
        if d.labels == "folders":
            raise DataError(f"{path}: data.labels = folders, but the file holds no 'labels'")
        labels, names = np.full(len(images), -1, dtype=np.int64), []
    elif names is None:
        names = [str(k) for k in range(int(labels.max()) + 1)]
    sources = [f"{path}#{i}" for i in range(len(images))]
    return _split_pool(images, labels, names, sources, hasher.describe(), d.test_fraction, seed, str(path))


def read_user_split(d, split: str, seed: int):
    """One split of data.path as an ImageSet (``d`` is the config's data section)."""
    from structgen.data.registry import ImageSet

    if not d.path:
        raise DataError(f"data.dataset = {d.dataset} needs data.path")
    path = Path(d.path).expanduser()
    if not path.exists():
        raise DataError(f"data.path {str(path)!r} does not exist")
    key = _key(d, seed, path)
    if key not in _CACHE:
        _CACHE.clear()                      # one data set at a time: bounded memory
        _CACHE[key] = (_read_folder if d.dataset == "folder" else _read_arrays)(d, seed, path)
    images, labels, names, sources, fp = _CACHE[key][split]
    return ImageSet(images, labels, d.dataset, split, list(names), sources=list(sources), fingerprint=fp)
