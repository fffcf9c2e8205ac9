"""FFCV ``.beton`` files of an ImageSet: writing, naming, and the sidecar check.

A file holds three fields: ``image`` (FFCV's RGBImageField, raw pixels or JPEG), ``label`` and
``index`` (the image's position in the split it was written from, so a batch names what was
read). FFCV's image field is RGB only: single-channel images are stored with the grey value in
all three channels and read back as channel 0 (raw mode stays byte-exact).

Beside each file, ``<name>.beton.json`` records dataset, split, count, shape, image mode, this
module's FORMAT_VERSION, a fingerprint of the source arrays and the file's size. It is checked
before FFCV opens the file, so a missing, truncated, stale or foreign file fails with a message
that gives the command rebuilding it instead of a crash inside FFCV's reader.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

import numpy as np

from structgen.errors import DataError
from structgen.torch_threads import keep_torch_threads

FORMAT_VERSION = 1
FIELDS = ("image", "label", "index")
IMAGE_MODES = ("raw", "jpg")
JPEG_QUALITY = 90
_PAGE_SIZE = 1 << 21          # FFCV's smallest page: small files stay small


# ---- naming and fingerprints ---------------------------------------------------------------
def beton_path(ffcv_dir, dataset: str, split: str) -> Path:
    return Path(ffcv_dir) / f"{dataset}-{split}.beton"


def sidecar_path(beton) -> Path:
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the pixels and labels: tells whether a file holds exactly these arrays."""
    return fingerprint_chunks(images.shape, [(images, labels)])


def fingerprint_chunks(shape, chunks) -> str:
    """``fingerprint`` of (images, labels) handed over in consecutive chunks, N x C x H x W
    images in all (``shape``)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(shape)).encode())
    labels = []
    for images, chunk_labels in chunks:
        h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        labels.append(np.asarray(chunk_labels, dtype=np.int64).reshape(-1))
    labels = np.ascontiguousarray(np.concatenate(labels))
    h.update(str(labels.shape).encode())
    h.update(memoryview(labels).cast("B"))
    return h.hexdigest()


def default_rebuild_command(ffcv_dir, dataset: str, image_mode: str = "raw") -> str:
    mode = f" --image-mode {image_mode}" if image_mode != "raw" else ""
    return f"structgen prepare-data --dataset {dataset} --format ffcv --ffcv-dir {shlex.quote(str(ffcv_dir))}{mode}"


# ---- writing ---------------------------------------------------------------------------------
class ArraySource:
    """What the writer reads: ``count`` images of ``shape`` (C, H, W), served in chunks.

    This one serves an ImageSet held in memory; a generator of a set larger than memory
    (benchmarks/large_data.py) serves the same surface and is written without being held.
    """

    def __init__(self, ds):
        self.ds = ds
        self.name, self.split, self.class_names = ds.name, ds.split, list(ds.class_names)
        self.count, self.shape = len(ds.images), tuple(ds.images.shape[1:])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Images [start, stop) as uint8 N x C x H x W, and their int64 labels."""
        return self.ds.images[start:stop], self.ds.labels[start:stop]


class _Samples:
    """The indexable FFCV's writer reads: (HWC uint8 RGB image, label, index) per sample."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return self.source.count

    def __getitem__(self, i):
        image, label = self.source.read(i, i + 1)
        hwc = image[0].transpose(1, 2, 0)
        if hwc.shape[2] == 1:             # FFCV's image field is RGB only
            hwc = np.repeat(hwc, 3, axis=2)
        return np.ascontiguousarray(hwc), int(label[0]), int(i)


def _source_fingerprint(source, chunk: int = 8192) -> str:
    return fingerprint_chunks((source.count, *source.shape),
                              (source.read(s, min(s + chunk, source.count)) for s in range(0, source.count, chunk)))


def write_beton(ds, path, image_mode: str = "raw", num_workers: int | None = None, *,
                rebuild: str | None = None) -> Path:
    """Write ImageSet ``ds`` (or an ArraySource-like source) to ``path`` (atomically) and its
    sidecar; returns ``path``.

    ``rebuild`` is the command that recreates the file; it is stored in the sidecar so later
    errors can quote it.
    """
    with keep_torch_threads():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    source = ds if hasattr(ds, "read") else ArraySource(ds)
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"write_beton: image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    path = Path(path)
    n, (c, h, w) = source.count, source.shape
    if c not in (1, 3):
        raise DataError(f"{source.name}/{source.split}: FFCV stores 1- or 3-channel images, got {c} channels")
    if n == 0:
        raise DataError(f"{source.name}/{source.split}: no images to write to {path}")
    # FFCV's workers hang rather than fail on a bad sample, so every chunk is read once up front
    # (which also gives the fingerprint).
    digest = _source_fingerprint(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fields = {"image": RGBImageField(write_mode=image_mode, jpeg_quality=JPEG_QUALITY),
              "label": IntField(), "index": IntField()}
    try:
        workers = int(num_workers) if num_workers else len(os.sched_getaffinity(0))
        writer = DatasetWriter(str(tmp), fields, page_size=_PAGE_SIZE, num_workers=min(workers, max(1, n // 1000)))
        writer.from_indexed_dataset(_Samples(source), chunksize=1000)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"format_version": FORMAT_VERSION, "dataset": source.name, "split": source.split, "count": int(n),
            "shape": [int(c), int(h), int(w)], "image_mode": image_mode, "jpeg_quality": JPEG_QUALITY,
            "fingerprint": digest, "class_names": source.class_names, "size": path.stat().st_size,
            "rebuild": rebuild or default_rebuild_command(path.parent, source.name, image_mode)}
    side = sidecar_path(path)
    side_tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    side_tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(side_tmp, side)
    return path


# ---- checking --------------------------------------------------------------------------------
def check_beton(beton, expect: dict | None = None) -> dict:
    """The sidecar of ``beton`` after checking it against the file and ``expect``.

    ``expect`` may hold dataset, split, count, shape, image_mode and fingerprint (compared) and
    rebuild (the command quoted in errors).
    """
    beton, expect = Path(beton), dict(expect or {})
    side = sidecar_path(beton)
    guess = beton.stem.rsplit("-", 1)[0]
    rebuild = expect.get("rebuild") or default_rebuild_command(
        beton.parent, expect.get("dataset", guess), expect.get("image_mode", "raw"))

    def fail(problem: str):
        raise DataError(f"FFCV file {beton}: {problem}; rebuild it with: {rebuild}")

    if not beton.is_file():
        fail("does not exist")
    if not side.is_file():
        fail(f"its sidecar {side.name} is missing (file written by hand or interrupted)")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        fail(f"its sidecar {side.name} is unreadable ({e})")
    if not expect.get("rebuild") and meta.get("rebuild"):
        rebuild = meta["rebuild"]
    if meta.get("format_version") != FORMAT_VERSION:
        fail(f"written in structgen FFCV format {meta.get('format_version')!r}, this version reads "
             f"format {FORMAT_VERSION}")
    missing = {"dataset", "split", "count", "shape", "image_mode", "size"} - set(meta)
    if missing:
        fail(f"its sidecar lacks {sorted(missing)}")
    size = beton.stat().st_size
    if size != meta["size"]:
        fail(f"is {size} bytes but was written as {meta['size']} bytes (truncated or overwritten)")
    for key in ("dataset", "split", "count", "shape", "image_mode", "fingerprint"):
        if key in expect:
            want = list(expect[key]) if key == "shape" else expect[key]
            if meta.get(key) != want:
                what = "different images or labels (another seed, subset or data folder)" \
                    if key == "fingerprint" else f"{key} {meta.get(key)!r}"
                fail(f"holds {what}, expected {key} {want!r}")
    return meta
