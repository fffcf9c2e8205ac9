"""A loader over FFCV ``.beton`` files with TensorLoader's surface and order (the files
themselves: `ffcv_files`; FFCV's pipelines: `ffcv_pipeline`).

Order: computed here, not by FFCV. FFCV restarts its shuffle from epoch 0 whenever a Loader is
built (every resume, every phase), and its distributed mode needs a process group. The order is
TensorLoader's rule (both inherit ``memory_loader.ShardedOrder``): a pure function of (seed,
epoch), padded or truncated so every rank serves the same number of samples, rank r taking
positions r, r+W, ... So switching ``data.loader`` between memory and ffcv leaves every batch's
images unchanged.

ffcv (and numba) are imported only when a file is written or read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from structgen.data.ffcv_files import check_beton
from structgen.data.ffcv_pipeline import compiled_loader
from structgen.data.memory_loader import ShardedOrder
from structgen.torch_threads import keep_torch_threads


class FFCVLoader(ShardedOrder):
    """Batches from a ``.beton`` file with TensorLoader's surface and order.

    Yields (x, y, idx): x float32 in [0,1] (B,C,H,W) on ``device``, y int64 labels, idx int64
    indices into the written split. With ``two_views`` each image is augmented twice inside the
    FFCV pipeline (random resized crop, flip, colour jitter, greyscale) and x is
    [views1; views2] of shape (2B,C,H,W). ``indices`` restricts the loader to a subset.
    ``stream`` reads each batch's samples from the file (``ffcv_streaming``): resident memory
    stays one batch whatever the file's size (dataset beton; slower per image than FFCV's map).
    """

    def __init__(self, beton, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, indices=None, device="cpu",
                 num_workers: int | None = None, two_views: bool = False, expect: dict | None = None,
                 stream: bool = False, min_batches: int = 0):
        self.beton = Path(beton)
        self.meta = check_beton(self.beton, expect)
        self.rebuild = (expect or {}).get("rebuild") or self.meta.get("rebuild", "")
        super().__init__(self.meta["count"], batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size, drop_last=drop_last, indices=indices, min_batches=min_batches)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"FFCVLoader: device {self.device} requested but CUDA is not available")
        self.two_views = bool(two_views)
        self.num_workers = int(num_workers) if num_workers else torch.get_num_threads()
        self.shape = tuple(self.meta["shape"])
        self._ffcv = compiled_loader(self.beton, self.meta, batch_size, self.two_views, self.device,
                                     self.num_workers, self.rebuild, stream)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """ShardedOrder's indices as numpy, the form FFCV's traversal order takes."""
        return super().epoch_indices(epoch).numpy()

    def __iter__(self):
        self._ffcv.serve(self.epoch_indices(), keep_last=not self.drop_last)
        with keep_torch_threads():
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
