"""FFCV ``.beton`` files of an ImageSet, and a loader over them with TensorLoader's surface.

A file holds three fields: ``image`` (FFCV's RGBImageField, raw pixels or JPEG), ``label`` and
``index`` (the image's position in the split it was written from, so a batch names what was
read). FFCV's image field is RGB only: single-channel images are stored with the grey value in
all three channels and read back as channel 0 (raw mode stays byte-exact).

Beside each file, ``<name>.beton.json`` records dataset, split, count, shape, image mode, this
module's FORMAT_VERSION, a fingerprint of the source arrays and the file's size. It is checked
before FFCV opens the file, so a missing, truncated, stale or foreign file fails with a message
that gives the command rebuilding it instead of a crash inside FFCV's reader.

Order: computed here, not by FFCV. FFCV restarts its shuffle from epoch 0 whenever a Loader is
built (every resume, every phase), and its distributed mode needs a process group. The order is
TensorLoader's rule (``epoch_order``): a pure function of (seed, epoch), padded or truncated so
every rank serves the same number of samples, rank r taking positions r, r+W, ... So switching
``data.loader`` between memory and ffcv leaves every batch's images unchanged.

Compiled pipelines are cached per process: FFCV compiles a pipeline with numba on first use
(3-8 s), and sub-tree phases would otherwise pay that for every loader they build.

ffcv (and numba) are imported only when a file is written or read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from structgen.data.errors import DataError
from structgen.data.loader import _EPOCH_STRIDE

FORMAT_VERSION = 1
FIELDS = ("image", "label", "index")
IMAGE_MODES = ("raw", "jpg")
JPEG_QUALITY = 90
_PAGE_SIZE = 1 << 21          # FFCV's smallest page: small files stay small
_CACHE_SIZE = 16              # compiled pipelines kept per process (a run needs a handful)


# ---- naming and fingerprints ---------------------------------------------------------------
def beton_path(ffcv_dir, dataset: str, split: str) -> Path:
    return Path(ffcv_dir) / f"{dataset}-{split}.beton"


def sidecar_path(beton) -> Path:
    beton = Path(beton)
    return beton.with_name(beton.name + ".json")


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the pixels and labels: tells whether a file holds exactly these arrays."""
    h = hashlib.blake2b(digest_size=16)
    for a in (np.ascontiguousarray(images), np.ascontiguousarray(labels, dtype=np.int64)):
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def default_rebuild_command(ffcv_dir, dataset: str, image_mode: str = "raw") -> str:
    mode = f" --image-mode {image_mode}" if image_mode != "raw" else ""
    return f"structgen prepare-data --dataset {dataset} --format ffcv --ffcv-dir {shlex.quote(str(ffcv_dir))}{mode}"


@contextmanager
def _keep_torch_threads():
    """FFCV sets torch's thread count (to 1 on import, to its worker count per epoch)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _workers(num_workers) -> int:
    return int(num_workers) if num_workers else len(os.sched_getaffinity(0))


# ---- writing ---------------------------------------------------------------------------------
class _Samples:
    """The indexable FFCV's writer reads: (HWC uint8 RGB image, label, index) per sample."""

    def __init__(self, hwc: np.ndarray, labels: np.ndarray):
        self.hwc, self.labels = hwc, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.hwc[i], int(self.labels[i]), int(i)


def write_beton(ds, path, image_mode: str = "raw", num_workers: int | None = None, *,
                rebuild: str | None = None) -> Path:
    """Write ImageSet ``ds`` to ``path`` (atomically) and its sidecar; returns ``path``.

    ``rebuild`` is the command that recreates the file; it is stored in the sidecar so later
    errors can quote it.
    """
    with _keep_torch_threads():
        from ffcv.fields import IntField, RGBImageField
        from ffcv.writer import DatasetWriter

    if image_mode not in IMAGE_MODES:
        raise ValueError(f"write_beton: image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
    path = Path(path)
    n, c, h, w = ds.images.shape
    if c not in (1, 3):
        raise DataError(f"{ds.name}/{ds.split}: FFCV stores 1- or 3-channel images, got {c} channels")
    if n == 0:
        raise DataError(f"{ds.name}/{ds.split}: no images to write to {path}")
    # FFCV's workers hang rather than fail on a bad sample, so everything is converted up front.
    hwc = np.ascontiguousarray(ds.images.transpose(0, 2, 3, 1))
    if c == 1:
        hwc = np.ascontiguousarray(np.repeat(hwc, 3, axis=3))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fields = {"image": RGBImageField(write_mode=image_mode, jpeg_quality=JPEG_QUALITY),
              "label": IntField(), "index": IntField()}
    try:
        writer = DatasetWriter(str(tmp), fields, page_size=_PAGE_SIZE,
                               num_workers=min(_workers(num_workers), max(1, n // 1000)))
        writer.from_indexed_dataset(_Samples(hwc, ds.labels), chunksize=1000)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"format_version": FORMAT_VERSION, "dataset": ds.name, "split": ds.split, "count": int(n),
            "shape": [int(c), int(h), int(w)], "image_mode": image_mode, "jpeg_quality": JPEG_QUALITY,
            "fingerprint": fingerprint(ds.images, ds.labels), "size": path.stat().st_size,
            "rebuild": rebuild or default_rebuild_command(path.parent, ds.name, image_mode)}
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


# ---- order -------------------------------------------------------------------------------
def epoch_order(indices: np.ndarray, *, epoch: int, seed: int, shuffle: bool, rank: int,
                world_size: int, drop_last: bool) -> np.ndarray:
    """This rank's indices for ``epoch``, in serving order: TensorLoader.epoch_indices' rule."""
    order = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    n = len(order)
    num_samples = n // world_size if drop_last else math.ceil(n / world_size)
    total = num_samples * world_size
    if shuffle:
        g = torch.Generator().manual_seed((seed * _EPOCH_STRIDE + epoch) % 2**63)
        order = order[torch.randperm(n, generator=g)]
    order = order[:total] if total <= n else order.repeat(math.ceil(total / n))[:total]
    return order[rank::world_size].numpy()


# ---- FFCV pieces, built on first use (they need ffcv and numba) -----------------------------
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
_FFCV: dict = {}


def _ffcv_classes() -> dict:
    """The FFCV Loader that serves a given order, and the colour op; defined once, lazily."""
    if _FFCV:
        return _FFCV
    from dataclasses import replace

    with _keep_torch_threads():
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline.allocation_query import AllocationQuery
        from ffcv.pipeline.compiler import Compiler
        from ffcv.pipeline.operation import Operation

    class OrderedLoader(Loader):
        """Serves exactly the index order it is handed (``serve``) instead of its own."""

        _order = np.zeros(0, dtype=np.int64)
        _keep_last = False

        def serve(self, order: np.ndarray, keep_last: bool) -> None:
            self._order, self._keep_last = order, keep_last

        def next_traversal_order(self):
            return self._order

        def __len__(self):
            n, bs = len(self._order), self.batch_size
            return math.ceil(n / bs) if self._keep_last else n // bs

    class ColorJitterGray(Operation):
        """augment.color_jitter + random_grayscale on uint8 HWC RGB batches, per image.

        Brightness, contrast, saturation, hue (a YIQ rotation) with one probability for all
        four, then greyscale: the in-memory recipe, so both loaders draw the same distribution.
        FFCV's own colour ops have no hue or greyscale and a probability per op.
        """

        def __init__(self, strength=(0.4, 0.4, 0.4, 0.1), p_jitter=0.8, p_gray=0.2):
            super().__init__()
            self.strength, self.p_jitter, self.p_gray = strength, p_jitter, p_gray

        def generate_code(self):
            my_range = Compiler.get_iterator()
            sb, sc, ss, sh = self.strength
            pj, pg = self.p_jitter, self.p_gray
            yiq, yiq_inv = _YIQ, _YIQ_INV

            def color(images, dst):
                # Scalar loops, not array expressions: numba compiles them several times faster.
                n, h, w = images.shape[0], images.shape[1], images.shape[2]
                jitter = np.random.rand(n) < pj
                gray = np.random.rand(n) < pg
                fb = np.random.uniform(1 - sb, 1 + sb, n)
                fc = np.random.uniform(1 - sc, 1 + sc, n)
                fs = np.random.uniform(1 - ss, 1 + ss, n)
                fh = np.random.uniform(-sh, sh, n)
                for i in my_range(n):
                    mat = np.zeros((3, 3))       # yiq_inv @ hue rotation @ yiq, without BLAS
                    mean = 0.0
                    if jitter[i]:
                        cos, sin = np.cos(fh[i] * 2 * np.pi), np.sin(fh[i] * 2 * np.pi)
                        for a in range(3):
                            for b in range(3):
                                mat[a, b] = (yiq_inv[a, 0] * yiq[0, b]
                                             + yiq_inv[a, 1] * (cos * yiq[1, b] - sin * yiq[2, b])
                                             + yiq_inv[a, 2] * (sin * yiq[1, b] + cos * yiq[2, b]))
                        for r in range(h):
                            for q in range(w):
                                mean += (0.299 * images[i, r, q, 0] + 0.587 * images[i, r, q, 1]
                                         + 0.114 * images[i, r, q, 2])
                        mean *= fb[i] / (255.0 * h * w)   # mean luminance after brightness
                    for r in range(h):
                        for q in range(w):
                            red = images[i, r, q, 0] / 255.0
                            grn = images[i, r, q, 1] / 255.0
                            blu = images[i, r, q, 2] / 255.0
                            if jitter[i]:
                                red = (red * fb[i] - mean) * fc[i] + mean
                                grn = (grn * fb[i] - mean) * fc[i] + mean
                                blu = (blu * fb[i] - mean) * fc[i] + mean
                                lum = 0.299 * red + 0.587 * grn + 0.114 * blu
                                red = min(1.0, max(0.0, (red - lum) * fs[i] + lum))
                                grn = min(1.0, max(0.0, (grn - lum) * fs[i] + lum))
                                blu = min(1.0, max(0.0, (blu - lum) * fs[i] + lum))
                                r2 = mat[0, 0] * red + mat[0, 1] * grn + mat[0, 2] * blu
                                g2 = mat[1, 0] * red + mat[1, 1] * grn + mat[1, 2] * blu
                                b2 = mat[2, 0] * red + mat[2, 1] * grn + mat[2, 2] * blu
                                red, grn, blu = min(1.0, max(0.0, r2)), min(1.0, max(0.0, g2)), min(1.0, max(0.0, b2))
                            if gray[i]:
                                red = grn = blu = 0.299 * red + 0.587 * grn + 0.114 * blu
                            dst[i, r, q, 0] = np.uint8(red * 255.0 + 0.5)
                            dst[i, r, q, 1] = np.uint8(grn * 255.0 + 0.5)
                            dst[i, r, q, 2] = np.uint8(blu * 255.0 + 0.5)
                return dst

            color.is_parallel = True
            return color

        def declare_state_and_memory(self, previous_state):
            return (replace(previous_state, jit_mode=True),
                    AllocationQuery(previous_state.shape, previous_state.dtype))

    _FFCV.update(OrderedLoader=OrderedLoader, ColorJitterGray=ColorJitterGray, SEQUENTIAL=OrderOption.SEQUENTIAL)
    return _FFCV


def _pipelines(shape, two_views: bool, device: torch.device) -> dict:
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

    c, h, w = shape
    # ToDevice only where a GPU exists: FFCV's op needs CUDA.
    to_device = [ToDevice(device, non_blocking=True)] if device.type == "cuda" and torch.cuda.is_available() else []

    def view_ops():
        ops = [RandomHorizontalFlip(0.5)]
        if c == 3:                                     # colour ops mean nothing on grey images
            ops.append(_ffcv_classes()["ColorJitterGray"]())
        return ops + [ToTensor(), ToTorchImage()] + to_device

    def crop():                                        # augment.random_resized_crop_flip's ranges
        return RandomResizedCropRGBImageDecoder((h, w), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))

    pipes = {"label": [IntDecoder(), ToTensor()] + to_device,
             "index": [IntDecoder(), ToTensor()] + to_device}
    if two_views:
        pipes["image"] = [crop()] + view_ops()
        pipes["image_view2"] = PipelineSpec("image", decoder=crop(), transforms=view_ops())
    else:
        pipes["image"] = [SimpleRGBImageDecoder(), ToTensor(), ToTorchImage()] + to_device
    return pipes


_LOADERS: OrderedDict = OrderedDict()


def _ffcv_loader(beton: Path, meta: dict, batch_size: int, two_views: bool, device: torch.device,
                 num_workers: int, rebuild: str):
    """A compiled FFCV loader for these settings, shared by every FFCVLoader that needs it."""
    st = beton.stat()
    key = (str(beton.resolve()), st.st_size, st.st_mtime_ns, batch_size, two_views, str(device), num_workers)
    if key in _LOADERS:
        _LOADERS.move_to_end(key)
        return _LOADERS[key]
    classes = _ffcv_classes()
    try:
        with _keep_torch_threads():
            loader = classes["OrderedLoader"](str(beton), batch_size=batch_size, num_workers=num_workers,
                                              order=classes["SEQUENTIAL"], drop_last=False,
                                              pipelines=_pipelines(tuple(meta["shape"]), two_views, device))
    except Exception as e:  # FFCV's reader fails with assorted types on a damaged header
        raise DataError(f"FFCV file {beton}: FFCV cannot open it ({type(e).__name__}: {e}); "
                        f"rebuild it with: {rebuild}") from e
    reader = loader.reader
    _, h, w = meta["shape"]
    problems = []
    if list(reader.handlers) != list(FIELDS):
        problems.append(f"fields {list(reader.handlers)}, expected {list(FIELDS)}")
    if int(reader.num_samples) != meta["count"]:
        problems.append(f"{int(reader.num_samples)} samples but its sidecar says {meta['count']}")
    elif not problems:
        img = reader.metadata[reader.metadata.dtype.names[FIELDS.index("image")]]  # fields are unnamed
        if (img["height"] != h).any() or (img["width"] != w).any():
            problems.append(f"images that are not all {h}x{w}")
    if problems:
        raise DataError(f"FFCV file {beton}: holds {'; '.join(problems)}; rebuild it with: {rebuild}")
    _LOADERS[key] = loader
    while len(_LOADERS) > _CACHE_SIZE:
        _LOADERS.popitem(last=False)
    return loader


# ---- the loader ----------------------------------------------------------------------------
class FFCVLoader:
    """Batches from a ``.beton`` file with TensorLoader's surface and order.

    Yields (x, y, idx): x float32 in [0,1] (B,C,H,W) on ``device``, y int64 labels, idx int64
    indices into the written split. With ``two_views`` each image is augmented twice inside the
    FFCV pipeline (random resized crop, flip, colour jitter, greyscale) and x is
    [views1; views2] of shape (2B,C,H,W). ``indices`` restricts the loader to a subset.
    """

    def __init__(self, beton, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, indices=None, device="cpu",
                 num_workers: int | None = None, two_views: bool = False, expect: dict | None = None):
        self.beton = Path(beton)
        self.meta = check_beton(self.beton, expect)
        self.rebuild = (expect or {}).get("rebuild") or self.meta.get("rebuild", "")
        if not 0 <= rank < world_size:
            raise ValueError(f"FFCVLoader: rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
        if batch_size < 1:
            raise ValueError(f"FFCVLoader: batch_size must be >= 1, got {batch_size}")
        n_total = self.meta["count"]
        if indices is None:
            self.indices = np.arange(n_total, dtype=np.int64)
        else:
            self.indices = np.asarray(torch.as_tensor(indices).cpu(), dtype=np.int64).reshape(-1)
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n_total):
                raise ValueError(f"FFCVLoader: indices must lie in 0..{n_total - 1}, got range "
                                 f"{self.indices.min()}..{self.indices.max()}")
        n = len(self.indices)
        if n == 0:
            raise ValueError("FFCVLoader: no samples to serve (empty indices)")
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.num_samples = n // world_size if drop_last else math.ceil(n / world_size)
        self._num_batches = (self.num_samples // batch_size if drop_last
                             else math.ceil(self.num_samples / batch_size))
        if self._num_batches == 0:
            raise ValueError(f"FFCVLoader: batch_size {batch_size} is larger than this rank's shard of "
                             f"{self.num_samples} samples ({n} samples over world_size {world_size}) and "
                             f"drop_last=True, so there would be no batches")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"FFCVLoader: device {self.device} requested but CUDA is not available")
        self.two_views = bool(two_views)
        self.num_workers = int(num_workers) if num_workers else torch.get_num_threads()
        self.shape = tuple(self.meta["shape"])
        self._ffcv = _ffcv_loader(self.beton, self.meta, batch_size, self.two_views, self.device,
                                  self.num_workers, self.rebuild)
        self.epoch = 0

    # ---- epoch order ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        return epoch_order(self.indices, epoch=self.epoch if epoch is None else epoch, seed=self.seed,
                           shuffle=self.shuffle, rank=self.rank, world_size=self.world_size,
                           drop_last=self.drop_last)

    # ---- iteration -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self):
        self._ffcv.serve(self.epoch_indices(), keep_last=not self.drop_last)
        with _keep_torch_threads():
            it = iter(self._ffcv)      # the order is captured here; the loader may be reused
        try:
            for batch in it:
                yield self._convert(batch)
            self.epoch += 1            # only reached after a complete pass
        finally:
            it.close()

    def _convert(self, batch):
        """FFCV's reused uint8 buffers -> fresh float [0,1] NCHW, int64 labels and indices."""
        views = (batch[0], batch[3]) if self.two_views else (batch[0],)
        c, h, w = self.shape
        b = len(views[0])
        x = torch.empty((len(views) * b, c, h, w), dtype=torch.float32, device=views[0].device)
        for k, v in enumerate(views):
            x[k * b:(k + 1) * b].copy_(v[:, :c])   # grey files repeat the value in 3 channels
        x.div_(255.0)
        return x, batch[1].reshape(-1).clone(), batch[2].reshape(-1).clone()

    # ---- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "seed"} - set(state)
        if missing:
            raise KeyError(f"FFCVLoader.load_state_dict: missing keys {sorted(missing)} in {state}")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
