"""The FFCV side of the loader: a Loader subclass that serves a given order, the decoding and
two-view augmentation pipelines, and a per-process cache of compiled loaders (FFCV compiles a
pipeline with numba on first use, 3-8 s, and sub-tree phases would otherwise pay that for
every loader they build). ffcv and numba are imported on first use only.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from structgen.errors import DataError
from structgen.data.ffcv_files import FIELDS
from structgen.torch_threads import keep_torch_threads

_CACHE_SIZE = 16              # compiled pipelines kept per process (a run needs a handful)


# ---- FFCV pieces, built on first use (they need ffcv and numba) -----------------------------
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)
_FFCV: dict = {}


def _ffcv_classes() -> dict:
    """The FFCV Loader that serves a given order, and the colour op; defined once, lazily."""
    if _FFCV:
        return _FFCV
    from dataclasses import replace

    with keep_torch_threads():
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
                            for c, v in enumerate((red, grn, blu)):
                                dst[i, r, q, c] = np.uint8(v * 255.0 + 0.5)
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


def compiled_loader(beton: Path, meta: dict, batch_size: int, two_views: bool, device: torch.device,
                    num_workers: int, rebuild: str, stream: bool = False):
    """A compiled FFCV loader for these settings, shared by every FFCVLoader that needs it.
    ``stream``: read each batch from the file instead of FFCV's map of it (ffcv_streaming)."""
    from structgen.data.ffcv_streaming import streaming_loader_memory

    st = beton.stat()
    key = (str(beton.resolve()), st.st_size, st.st_mtime_ns, batch_size, two_views, str(device), num_workers, stream)
    if key in _LOADERS:
        _LOADERS.move_to_end(key)
        return _LOADERS[key]
    classes = _ffcv_classes()
    try:
        with keep_torch_threads(), (streaming_loader_memory() if stream else nullcontext()):
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
