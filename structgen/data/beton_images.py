"""The images of a raw-mode ``.beton`` file as a uint8 N x C x H x W array read on demand.

Dataset ``beton`` makes a ``.beton`` file itself a run's data, so that a set larger than memory
can be trained on: the FFCV loader streams the training batches, and every other pass over the
set (leaf probabilities for growth, evaluation, ``assign``) indexes this array one batch at a
time. Only each image's file offset and label are held (16 bytes an image); pixels are read
with ``pread`` and never mapped, so a whole pass leaves the process's resident memory where it
was (the kernel's page cache keeps what it can spare).

Turning the whole array into a numpy array (``np.asarray``) is allowed only when it fits in
memory (``memory_fit``): that is what the in-RAM loader asks for; the copy is then kept.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from structgen.data.ffcv_files import check_beton
from structgen.errors import DataError
from structgen.torch_threads import keep_torch_threads

_RAW_MODE = 1                       # FFCV's RGBImageField: 0 = jpg, 1 = raw pixels
_CHUNK = 4096                       # images per read when the whole array is asked for


class BetonImages:
    """Read-only uint8 (N, C, H, W) view of a structgen-written raw ``.beton`` file."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path, limit_gb: float = 0.0):
        self._fd, self._pid = None, None          # opened on first read, per process
        self._held = None                         # every image, once __array__ has read them
        self.path = Path(path)
        self.meta = check_beton(self.path)
        if self.meta["image_mode"] != "raw":
            raise DataError(f"FFCV file {self.path}: holds {self.meta['image_mode']} images; dataset beton "
                            f"reads raw pixels only (write the file with --image-mode raw)")
        with keep_torch_threads():
            from ffcv.reader import Reader

            try:
                reader = Reader(str(self.path))
            except Exception as e:  # FFCV's reader fails with assorted types on a damaged header
                raise DataError(f"FFCV file {self.path}: FFCV cannot read it ({type(e).__name__}: {e})") from e
        image, label = (reader.metadata[name] for name in reader.metadata.dtype.names[:2])
        c, h, w = self.meta["shape"]
        if len(image) != self.meta["count"] or (image["mode"] != _RAW_MODE).any() \
                or (image["height"] != h).any() or (image["width"] != w).any():
            raise DataError(f"FFCV file {self.path}: its images are not {self.meta['count']} raw {h}x{w} "
                            f"images as its sidecar says; rebuild it")
        self.offsets = np.ascontiguousarray(image["data_ptr"], dtype=np.int64)
        self.labels = np.ascontiguousarray(label, dtype=np.int64)
        self.shape = (len(self.offsets), c, h, w)
        self.limit_gb = limit_gb

    # ---- array surface -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    @property
    def fingerprint(self) -> str:
        return self.meta.get("fingerprint", "")

    def __getitem__(self, key) -> np.ndarray:
        """An int gives one (C, H, W) image; a slice, an index array or a boolean mask gives
        (n, C, H, W), read from the file now."""
        if isinstance(key, (int, np.integer)):
            return self._read(np.array([key]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(len(self))))   # not an N-long arange per batch
        key = np.asarray(key.cpu() if hasattr(key, "cpu") else key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} images")
            key = np.flatnonzero(key)
        return self._read(key.astype(np.int64, copy=False).reshape(-1))

    def __array__(self, dtype=None, copy=None):
        """All images in memory, if they fit (memory_fit); read once and then kept, as the
        memory loader of every later phase asks again."""
        if self._held is None:
            from structgen.data.memory_fit import check_fits_in_memory

            check_fits_in_memory(self.nbytes, f"dataset beton {self.path}", self.limit_gb)
            held = np.empty(self.shape, dtype=np.uint8)
            for start in range(0, len(self), _CHUNK):
                held[start:start + _CHUNK] = self[start:start + _CHUNK]
            self._held = held
        return self._held if dtype is None else self._held.astype(dtype)

    # ---- reading -------------------------------------------------------------------------------
    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():   # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def _read(self, rows: np.ndarray) -> np.ndarray:
        n_total = len(self)
        if len(rows) and (rows.min() < -n_total or rows.max() >= n_total):
            raise IndexError(f"index out of range for {n_total} images of {self.path}")
        if self._held is not None:
            return self._held[rows]
        _, c, h, w = self.shape
        size, fd = h * w * 3, self._file()          # stored as RGB: grey images repeat the value
        out = np.empty((len(rows), c, h, w), dtype=np.uint8)
        for k, offset in enumerate(self.offsets[rows].tolist()):
            data = os.pread(fd, size, offset)
            if len(data) != size:
                raise DataError(f"FFCV file {self.path}: image {int(rows[k])} is cut short (truncated file)")
            out[k] = np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)[:, :, :c].transpose(2, 0, 1)
        return out

    def __getstate__(self):              # a file descriptor does not travel to another process, nor a held copy
        return {**self.__dict__, "_fd": None, "_pid": None, "_held": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def __repr__(self) -> str:
        return f"BetonImages({str(self.path)!r}, shape={self.shape})"
