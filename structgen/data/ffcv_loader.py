"""A loader over FFCV ``.beton`` files with TensorLoader's surface and order (the files
themselves: `ffcv_files`; FFCV's pipelines: `ffcv_pipeline`).

Order: computed here, not by FFCV. FFCV restarts its shuffle from epoch 0 whenever a Loader is
built (every resume, every phase), and its distributed mode needs a process group. The order is
TensorLoader's rule (``epoch_order``): a pure function of (seed, epoch), padded or truncated so
every rank serves the same number of samples, rank r taking positions r, r+W, ... So switching
``data.loader`` between memory and ffcv leaves every batch's images unchanged.

ffcv (and numba) are imported only when a file is written or read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from structgen.data.ffcv_files import check_beton, keep_torch_threads
from structgen.data.ffcv_pipeline import compiled_loader
from structgen.data.memory_loader import _EPOCH_STRIDE


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
        self._ffcv = compiled_loader(self.beton, self.meta, batch_size, self.two_views, self.device,
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

    # ---- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "seed"} - set(state)
        if missing:
            raise KeyError(f"FFCVLoader.load_state_dict: missing keys {sorted(missing)} in {state}")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
