"""Batches straight from an in-memory uint8 tensor, sharded across ranks.

Small image sets (MNIST is 47 MB as uint8) fit on any device, so the whole set is held once as
a uint8 tensor (on ``device``) and each batch is one indexing op plus a float conversion, with
no worker processes and no per-sample Python.

Order and sharding follow torch's DistributedSampler: the epoch's permutation is a pure
function of (seed, epoch); it is truncated (``drop_last``) or padded by wrapping around so that
every rank gets the same number of samples, and rank r takes positions r, r+W, r+2W, ...
So with ``drop_last`` the ranks' samples are disjoint, without it every index is served at
least once, and every rank always runs the same number of batches (DDP needs that).

Epochs: ``set_epoch(e)`` picks the order; a pass that runs to its end moves on to the next epoch
by itself, so ``state_dict()`` taken between epochs names the epoch that comes next.

``min_batches``: a set too small to give that many batches in one pass is passed over several
times in one epoch, each pass a permutation of its own (the first is the one-pass order), so
that a phase's length in epochs buys a small set (or a small leaf's sub-tree) enough optimiser
steps. The passes are joined before batching: a batch may straddle two of them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_EPOCH_STRIDE = 100003  # generator seed = seed * stride + epoch: distinct per (seed, epoch)
_PASS_STRIDE = 1009     # later passes of one epoch: (seed * stride + epoch) * 1009 + pass


def _as_tensor(a, dtype: torch.dtype, what: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a if a.flags.writeable else a.copy())
    t = torch.as_tensor(a)
    if t.dtype != dtype:
        if what == "images":
            raise TypeError(f"TensorLoader: images must be uint8 (got {t.dtype}); convert once, "
                            "not per batch")
        t = t.to(dtype)
    return t


def as_float_nchw(batch_uint8: torch.Tensor) -> torch.Tensor:
    """float32 in [0,1], laid out as plain NCHW whatever the stored strides. A grey image's
    1-long channel axis can carry strides that also read as channels-last (an array made with
    ``[:, None]``); torch's convolutions would then run NHWC and hand that on to every layer."""
    return batch_uint8.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def to_device_float(batch_uint8: torch.Tensor, device) -> torch.Tensor:
    """A uint8 CPU batch as float32 in [0,1] on ``device``.

    Moved as uint8 (4x fewer bytes than float) and converted there. On CUDA the batch is pinned
    and copied with ``non_blocking``, so the host queues the copy behind the running kernels and
    goes on preparing the next batch instead of waiting for it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        batch_uint8 = batch_uint8.pin_memory().to(device, non_blocking=True)
    else:
        batch_uint8 = batch_uint8.to(device)
    return as_float_nchw(batch_uint8)


def passes_per_epoch(num_samples: int, batch_size: int, min_batches: int, drop_last: bool = True) -> int:
    """Passes over ``num_samples`` (one rank's) that one epoch makes to serve ``min_batches``."""
    one_pass = num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
    if num_samples == 0 or min_batches <= one_pass:
        return 1
    return math.ceil(min_batches * batch_size / num_samples)


class ShardedOrder:
    """The order a loader serves its samples in: per rank, per epoch (see the module docstring).

    Shared by TensorLoader and FFCVLoader so that both serve the same indices for the same seed.
    Holds the argument checks, the batch count, the epoch counter and the checkpoint state;
    subclasses add the data and ``__iter__``. Messages name the subclass.
    """

    def __init__(self, n_total: int, batch_size: int, *, shuffle: bool, seed: int, rank: int,
                 world_size: int, drop_last: bool, indices=None, min_batches: int = 0):
        name = type(self).__name__
        if not 0 <= rank < world_size:
            raise ValueError(f"{name}: rank {rank} is outside 0..{world_size - 1} "
                             f"(world_size {world_size})")
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")

        if indices is None:
            self.indices = torch.arange(n_total, dtype=torch.int64)
        else:
            self.indices = _as_tensor(indices, torch.int64, "indices").reshape(-1).cpu()
            if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n_total):
                raise ValueError(f"{name}: indices must lie in 0..{n_total - 1}, got range "
                                 f"{int(self.indices.min())}..{int(self.indices.max())}")
        n = len(self.indices)
        if n == 0:
            raise ValueError(f"{name}: no samples to serve (empty images or indices)")

        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        # Samples per rank, equal on every rank (DistributedSampler's rule).
        self.num_samples = n // world_size if drop_last else math.ceil(n / world_size)
        self.total_size = self.num_samples * world_size
        self.passes = passes_per_epoch(self.num_samples, batch_size, min_batches, drop_last)
        n_batches = ((self.passes * self.num_samples) // batch_size if drop_last
                     else math.ceil(self.passes * self.num_samples / batch_size))
        if n_batches == 0:
            raise ValueError(
                f"{name}: batch_size {batch_size} is larger than this rank's shard of "
                f"{self.num_samples} samples ({n} samples over world_size {world_size}) and "
                f"drop_last=True, so there would be no batches"
            )
        self._num_batches = n_batches
        self.epoch = 0

    # ---- epoch order ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's dataset indices for an epoch, in serving order (before batching)."""
        epoch = self.epoch if epoch is None else epoch
        return torch.cat([self._pass_indices(epoch, p) for p in range(self.passes)])

    def _pass_indices(self, epoch: int, pass_: int) -> torch.Tensor:
        """This rank's indices for one pass over the set: pass 0 is the plain epoch's order."""
        order = self.indices
        if self.shuffle:
            key = self.seed * _EPOCH_STRIDE + epoch
            if pass_:
                key = key * _PASS_STRIDE + pass_
            g = torch.Generator().manual_seed(key % 2**63)
            order = order[torch.randperm(len(order), generator=g)]
        if self.total_size <= len(order):
            order = order[: self.total_size]
        else:  # pad by wrapping around, repeatedly if world_size exceeds the sample count
            reps = math.ceil(self.total_size / len(order))
            order = order.repeat(reps)[: self.total_size]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        return self._num_batches

    # ---- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "seed"} - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {sorted(missing)} "
                           f"in {state}")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])


class TensorLoader(ShardedOrder):
    """In-memory batches from uint8 NCHW arrays.

    Yields (x, y, idx): x float32 in [0,1] (B,C,H,W), y int64 labels, idx int64 dataset indices.
    ``indices`` restricts the loader to a subset (sub-tree training); ``idx`` still refers to
    the full arrays.
    """

    def __init__(self, images, labels, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, indices=None,
                 device="cpu", min_batches: int = 0):
        self.device = torch.device(device)
        self.images = _as_tensor(images, torch.uint8, "images").to(self.device)
        self.labels = _as_tensor(labels, torch.int64, "labels").to(self.device)
        n_total = len(self.images)
        if self.images.ndim != 4:
            raise ValueError("TensorLoader: images must be N x C x H x W, got shape "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (n_total,):
            raise ValueError(f"TensorLoader: {n_total} images but labels of shape {tuple(self.labels.shape)}")
        super().__init__(n_total, batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size, drop_last=drop_last, indices=indices, min_batches=min_batches)

    def __iter__(self):
        shard = self.epoch_indices().to(self.device)
        bs = self.batch_size
        for b in range(self._num_batches):
            idx = shard[b * bs : (b + 1) * bs]
            x = as_float_nchw(self.images[idx])
            yield x, self.labels[idx], idx
        self.epoch += 1  # only reached after a complete pass
