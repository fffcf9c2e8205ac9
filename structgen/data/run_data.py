"""The train and test splits a run uses, after the config's class and size subsets."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from structgen.data import ImageSet, load_split


@dataclass
class RunData:
    train: ImageSet
    test: ImageSet

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.train.class_names)

    @property
    def labelled(self) -> bool:
        """False for unlabelled user data: no class metrics, no histograms."""
        return self.train.labelled


def _keep(ds: ImageSet, mask_or_index, labels=None, class_names=None) -> ImageSet:
    sup = ds.superclass[mask_or_index] if ds.superclass is not None else None
    sources = list(np.asarray(ds.sources, dtype=object)[mask_or_index]) if ds.sources is not None else None
    return replace(ds, images=ds.images[mask_or_index], labels=labels if labels is not None else ds.labels[mask_or_index],
                   class_names=class_names or ds.class_names, superclass=sup, sources=sources)


def _subset(ds: ImageSet, n: int, seed: int) -> ImageSet:
    if not n or n >= len(ds):
        return ds
    index = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return _keep(ds, index)


def load_run_data(cfg) -> RunData:
    d, seed = cfg.data, cfg.run.seed
    train = load_split(d.dataset, "train", d.data_dir, seed=seed, test_fraction=d.test_fraction, data_cfg=d)
    test = load_split(d.dataset, "test", d.data_dir, seed=seed, test_fraction=d.test_fraction, data_cfg=d)
    if train.fingerprint is not None:
        # Recorded in the run's config.yml and checkpoint; a resume whose files differ then
        # differs in this key, and check_resumable refuses it, showing both fingerprints.
        d.fingerprint = train.fingerprint
    if d.num_clusters_data and d.num_clusters_data < len(train.class_names):
        # A seeded subset of classes, relabelled 0..k-1 in their original order.
        kept = np.sort(np.random.default_rng(seed).choice(len(train.class_names), d.num_clusters_data, replace=False))
        lut = np.full(len(train.class_names), -1, dtype=np.int64)
        lut[kept] = np.arange(len(kept))
        names = [train.class_names[k] for k in kept]
        train = _keep(train, np.isin(train.labels, kept), None, names)
        train = replace(train, labels=lut[train.labels])
        test = _keep(test, np.isin(test.labels, kept), None, names)
        test = replace(test, labels=lut[test.labels])
    return RunData(_subset(train, d.train_subset, seed), _subset(test, d.test_subset, seed + 1))


def run_test_split(cfg):
    """The run's test split as load_run_data gives it (same seed, classes and subset), read
    without the training images unless data.num_clusters_data needs their classes; labels as the
    dataset has them (None when unlabelled)."""
    d, seed = cfg.data, cfg.run.seed
    if d.num_clusters_data:
        return load_run_data(cfg).test
    test = load_split(d.dataset, "test", d.data_dir, seed=seed, test_fraction=d.test_fraction, data_cfg=d)
    return _subset(test, d.test_subset, seed + 1)


def labelled_test_split(cfg):
    """The run's test split with labels in the dataset's own classes (what its classifier
    predicts), or None: unlabelled data, or data.num_clusters_data renumbered the labels."""
    if cfg.data.num_clusters_data:
        return None
    test = run_test_split(cfg)
    return test if test.labels is not None else None


def check_batch_fits(images_per_batch: int, key: str, data: RunData) -> None:
    """Training drops the last incomplete batch, so a batch larger than the training set would
    train on nothing: refuse it before a run folder is made."""
    from structgen.config import ConfigError

    if images_per_batch > len(data.train):
        raise ConfigError(f"{key} asks for {images_per_batch} images per batch but the training set holds only "
                          f"{len(data.train)}; lower {key} (or use more data)")
