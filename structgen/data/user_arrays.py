"""`data.dataset: arrays`: images already in arrays, in an ``.npz`` or an idx-ubyte file.

``.npz`` (read with ``allow_pickle=False``, so a file cannot run code): ``images`` shaped
N x H x W, N x H x W x C or N x C x H x W (C = 1, 3 or 4), uint8 or float in [0, 1];
optional ``labels`` (N non-negative integers) and ``class_names``. An idx3-ubyte images file
(``.gz`` or plain) takes its labels from the idx1-ubyte file beside it when there is one
(``train-images-idx3-ubyte.gz`` -> ``train-labels-idx1-ubyte.gz``).
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from structgen.errors import DataError
from structgen.data.file_bytes import find_stored, read_stored
from structgen.data.idx import parse_idx_images, parse_idx_labels


def _nchw(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in (1, 3, 4):
        return images
    if images.ndim == 4 and images.shape[3] in (1, 3, 4):
        return images.transpose(0, 3, 1, 2)
    raise DataError(f"{where}: 'images' has shape {images.shape}; expected N x H x W, N x H x W x C or "
                    f"N x C x H x W with C = 1, 3 or 4")


def _uint8(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise DataError(f"{where}: 'images' holds NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: float 'images' must lie in [0, 1]; found {lo:g} .. {hi:g} "
                            f"(store uint8 0..255, or divide by 255)")
        return np.round(images * 255.0).astype(np.uint8)
    raise DataError(f"{where}: 'images' has dtype {images.dtype}; expected uint8 or float in [0, 1]")


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError(f"{where}: {n} images but 'labels' has shape {labels.shape} "
                        f"({labels.size} labels); the counts must match")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"{where}: 'labels' must be non-negative integers; got dtype {labels.dtype}")
    return labels.astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if "images" not in keys:
                raise DataError(f"{where}: no 'images' array inside (found: {', '.join(sorted(keys)) or 'nothing'})")
            images = f["images"]
            labels = f["labels"] if "labels" in keys else None
            names = [str(c) for c in f["class_names"]] if "class_names" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from e
    images = _uint8(_nchw(np.asarray(images), where), where)
    return images, (_check_labels(labels, len(images), where) if labels is not None else None), names


def _idx_labels_file(images: Path) -> tuple[Path, list[Path]] | None:
    """The idx1 labels file beside an idx3 images file, as ``file_bytes.find_stored`` finds it
    (``.gz`` first, whole or in pieces, then plain); None for other files or when there is none.
    Reading and fingerprinting both ask here, so the labels read are the labels hashed."""
    name = images.name.removesuffix(".gz")
    labels = name.replace("images-idx3", "labels-idx1")
    return find_stored(images.parent, labels, "arrays") if labels != name else None


def data_files(path: Path) -> list[Path]:
    """The files an arrays data set is read from: ``path`` and, for idx, its labels file (or pieces)."""
    labels = _idx_labels_file(path)
    return [path] + (labels[1] if labels else [])


def _read_idx(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    data, where = read_stored(path, [path], "arrays")   # the file named, not a .gz copy beside it
    if len(data) < 16:
        raise DataError(f"{where}: truncated: shorter than the 16-byte IDX images header")
    rows, cols = struct.unpack(">2i", data[8:16])
    images = parse_idx_images(data, where, (rows, cols))
    labels, labels_file = None, _idx_labels_file(path)
    if labels_file is not None:
        label_bytes, label_where = read_stored(*labels_file, "arrays")
        labels = parse_idx_labels(label_bytes, label_where, 256)
        if len(labels) != len(images):
            raise DataError(f"{where} holds {len(images)} images but {label_where} holds {len(labels)} labels")
    return images, labels, None


def read_arrays(path: Path, hasher) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(images N x C x H x W uint8, labels or None, class names or None); ``hasher`` (a
    user_data.FileHasher) takes the name and content of every file read."""
    if not path.exists():
        raise DataError(f"data.path {str(path)!r} does not exist")
    if path.is_dir():
        raise DataError(f"data.path {path} is a folder; use data.dataset=folder for a folder of image files")
    images, labels, names = (_read_npz(path) if path.suffix.lower() == ".npz" else _read_idx(path))
    if labels is not None and names is not None and len(names) <= int(labels.max(initial=-1)):
        raise DataError(f"{path}: 'labels' go up to {int(labels.max())} but 'class_names' has only {len(names)} "
                        f"names")
    for p in data_files(path):
        hasher.add(p.name, p.read_bytes())     # the labels file belongs to the data too
    return images, labels, names
