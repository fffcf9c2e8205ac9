"""MNIST-style IDX files (LeCun's idx3-ubyte images, idx1-ubyte labels).

Format: a big-endian header (magic, counts, dims) followed by raw uint8 values.
Images: magic 2051, n, rows, cols. Labels: magic 2049, n.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from structgen.errors import DataError
from structgen.data.file_bytes import read_file_bytes

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_PREFIX = {"train": "train", "test": "t10k"}


def _header(data: bytes, count: int, where: str) -> tuple[int, ...]:
    size = 4 * count
    if len(data) < size:
        raise DataError(f"{where}: truncated: {len(data)} bytes, shorter than the {size}-byte IDX header")
    return struct.unpack(f">{count}i", data[:size])


def _check_magic(magic: int, expected: int, where: str) -> None:
    if magic != expected:
        kind = {IMAGES_MAGIC: "an images file", LABELS_MAGIC: "a labels file"}.get(magic, "not an IDX file")
        raise DataError(f"{where}: bad magic number {magic} (expected {expected}); this looks like {kind}")


def parse_idx_images(data: bytes, where: str, shape: tuple[int, int]) -> np.ndarray:
    """N x 1 x rows x cols uint8 array; ``shape`` is the (rows, cols) the dataset must have."""
    magic, n, rows, cols = _header(data, 4, where)
    _check_magic(magic, IMAGES_MAGIC, where)
    if (rows, cols) != tuple(shape) or n < 0:
        raise DataError(f"{where}: header says {n} images of {rows}x{cols}, "
                        f"expected images of {shape[0]}x{shape[1]}")
    need, have = n * rows * cols, len(data) - 16
    if have < need:
        raise DataError(
            f"{where}: truncated: header says {n} images of {rows}x{cols} ({need} bytes) "
            f"but only {have} bytes follow"
        )
    if have > need:
        raise DataError(f"{where}: {have - need} unexpected bytes after the {n} images of {rows}x{cols}")
    # copy: frombuffer over immutable bytes is read-only, which torch.from_numpy warns about.
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, rows, cols).copy()


def parse_idx_labels(data: bytes, where: str, num_classes: int) -> np.ndarray:
    magic, n = _header(data, 2, where)
    _check_magic(magic, LABELS_MAGIC, where)
    have = len(data) - 8
    if have != n:
        problem = "truncated" if have < n else "too long"
        raise DataError(f"{where}: {problem}: header says {n} labels but {have} bytes follow")
    labels = np.frombuffer(data, np.uint8, offset=8).astype(np.int64)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise DataError(
            f"{where}: label {labels[bad[0]]} at index {bad[0]} is outside 0..{num_classes - 1} "
            f"({bad.size} such labels)"
        )
    return labels


def read_idx_split(folder: Path, split: str, dataset: str, shape: tuple[int, int],
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,1,H,W uint8) and labels (N int64) of one split of an MNIST-like folder."""
    if not folder.is_dir():
        raise DataError(f"{dataset}: data folder not found: {folder}")
    prefix = _PREFIX[split]
    img_bytes, img_where = read_file_bytes(folder, f"{prefix}-images-idx3-ubyte", dataset)
    images = parse_idx_images(img_bytes, f"{dataset}: {img_where}", shape)
    del img_bytes
    lab_bytes, lab_where = read_file_bytes(folder, f"{prefix}-labels-idx1-ubyte", dataset)
    labels = parse_idx_labels(lab_bytes, f"{dataset}: {lab_where}", num_classes)
    if len(images) != len(labels):
        raise DataError(
            f"{dataset}: {img_where} holds {len(images)} images but {lab_where} holds "
            f"{len(labels)} labels"
        )
    return images, labels
