"""The training loader a config asks for: ``data.loader`` = memory (TensorLoader) or ffcv.

Both kinds take the same arguments, serve the same order for the same seed (see
memory_loader.ShardedOrder) and yield (x float [0,1] NCHW, y int64, idx int64). With
``two_views`` both yield [views1; views2] (2B, C, H, W): FFCV augments inside its pipeline, the
memory loader through ``augment.two_views`` on the batch.

The FFCV path reads ``<ffcv_dir>/<dataset>-<split>.beton`` and checks that it holds exactly the
arrays handed in (a fingerprint of pixels and labels), so a file written for another seed,
subset or data folder is refused with the command that rebuilds it. Dataset ``beton`` hands in
the file itself (``BetonImages``): the FFCV loader streams it, the memory loader reads it whole
only where it fits in memory.
"""
from __future__ import annotations

import functools
import shlex
from pathlib import Path

import numpy as np
import torch

from structgen.data.memory_loader import TensorLoader


def ffcv_dir(data_cfg) -> Path:
    """data.ffcv_dir, or ./data/ffcv (the shared data folder may be read-only)."""
    if data_cfg.ffcv_dir:
        return Path(data_cfg.ffcv_dir).expanduser()
    return Path("data") / "ffcv"


def rebuild_command(d, seed: int) -> str:
    """The prepare-data command that writes the .beton files a run with data section ``d`` and
    run.seed ``seed`` (which draws its splits and subsets) reads."""
    from structgen.config.schema import DataConfig, RunConfig

    defaults = DataConfig()
    parts = ["structgen prepare-data", f"--dataset {d.dataset}", "--format ffcv",
             f"--ffcv-dir {shlex.quote(str(ffcv_dir(d)))}"]
    if d.data_dir:
        parts.append(f"--data-dir {shlex.quote(str(d.data_dir))}")
    if d.path:
        parts.append(f"--path {shlex.quote(str(d.path))}")
    if d.ffcv_image_mode != "raw":
        parts.append(f"--image-mode {d.ffcv_image_mode}")
    if seed != RunConfig().seed:
        parts.append(f"--seed {seed}")
    for key in ("test_fraction", "num_clusters_data", "train_subset", "test_subset", "image_size", "channels",
                "labels", "on_bad_image"):
        if getattr(d, key) != getattr(defaults, key):
            parts.append(f"--set data.{key}={getattr(d, key)}")
    return " ".join(parts)


def run_loaders(cfg):
    """`make_loader` bound to a run's data section and seed: what the training loops are handed,
    so that they never see the config's data keys."""
    return functools.partial(make_loader, cfg.data, split_seed=cfg.run.seed)


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


class _WithViews:
    """A TensorLoader whose batches are [views1; views2] (augment.two_views, global RNG)."""

    two_views = True

    def __init__(self, loader: TensorLoader):
        self.loader = loader

    def __getattr__(self, name):          # set_epoch, state_dict, epoch, ... of the inner loader
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        from structgen.data.augment import two_views

        for x, y, idx in self.loader:
            yield two_views(x), y, idx


def make_loader(d, images, labels, batch_size: int, *, split: str = "train", shuffle: bool = True,
                seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True, indices=None,
                device="cpu", two_views: bool = False, split_seed: int = 0, min_batches: int = 0):
    """TensorLoader or FFCVLoader per the data section ``d`` (``d.loader``), over
    ``images``/``labels`` of ``split``; ``seed`` orders the batches.

    ``images``/``labels`` are the run's arrays of that split (after the config's subsets, drawn
    with run.seed = ``split_seed``); the FFCV loader reads the same images from the split's
    .beton file and refuses a file that holds anything else.
    """
    from structgen.data.beton_images import BetonImages

    kind = d.loader
    if kind == "memory":
        if isinstance(images, BetonImages):       # read into memory, if it fits (memory_fit)
            images = np.asarray(images)
        loader = TensorLoader(images, labels, batch_size, shuffle=shuffle, seed=seed, rank=rank,
                              world_size=world_size, drop_last=drop_last, indices=indices, device=device,
                              min_batches=min_batches)
        return _WithViews(loader) if two_views else loader
    if kind != "ffcv":
        raise ValueError(f"make_loader: data.loader must be memory or ffcv, got {kind!r}")
    from structgen.data.ffcv_files import beton_path, fingerprint
    from structgen.data.ffcv_loader import FFCVLoader

    stream = isinstance(images, BetonImages)      # the run's data is the file itself: streamed
    if stream:
        path = images.path
        expect = {"count": len(images), "fingerprint": images.fingerprint}
    else:
        images, labels = _numpy(images), _numpy(labels)
        path = beton_path(ffcv_dir(d), d.dataset, split)
        expect = {"dataset": d.dataset, "split": split, "count": len(images), "shape": list(images.shape[1:]),
                  "image_mode": d.ffcv_image_mode, "fingerprint": fingerprint(images, labels),
                  "rebuild": rebuild_command(d, split_seed)}
    return FFCVLoader(path, batch_size, shuffle=shuffle, seed=seed,
                      rank=rank, world_size=world_size, drop_last=drop_last, indices=indices, device=device,
                      num_workers=d.ffcv_workers or None, two_views=two_views, expect=expect, stream=stream,
                      min_batches=min_batches)
