"""Which leaf every image lands in: probabilities from the trained tree, as arrays or CSV rows.

The leaf probabilities are ``TreeVAE.predict`` (the q-routers' reach of every leaf), the same
call the evaluation uses, so an image's most probable leaf here is its cluster everywhere.
The root latent mean is the root's posterior mean before any routing: one vector per image
that places it in the model's space (for plots, nearest neighbours, k-means of your own).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from structgen.data.memory_loader import to_device_float
from structgen.eval.image_stream import ImageStream
from structgen.tree.topology import ROOT


@dataclass
class Assignments:
    """One row per image. ``probs[i, j]`` is image i's probability of leaf ``leaves[j]``."""
    names: list[str]
    leaves: list[str]
    probs: np.ndarray                 # (N, n_leaves) float32
    latents: np.ndarray | None = None  # (N, D) root latent means, when asked for

    @property
    def leaf(self) -> np.ndarray:
        """Index into ``leaves`` of each image's most probable leaf."""
        return self.probs.argmax(1)

    @property
    def leaf_names(self) -> list[str]:
        return [self.leaves[k] for k in self.leaf]

    @property
    def leaf_probability(self) -> np.ndarray:
        return self.probs[np.arange(len(self.probs)), self.leaf]

    def __len__(self) -> int:
        return len(self.names)


def root_path(leaf: str) -> str:
    """``r/r0/r01``: the nodes from the root down to ``leaf``."""
    return "/".join(leaf[:k] for k in range(len(ROOT), len(leaf) + 1))


@torch.no_grad()
def assign_batch(model, x_uint8: np.ndarray, device, latents: bool):
    """(probs (B, L) float32, root latent means (B, D) or None) for one uint8 batch."""
    model.eval()
    x = to_device_float(torch.from_numpy(x_uint8), device)
    probs = model.predict(x)
    z = None
    if latents:
        feats = model.bottom_up(x)
        mu, _ = model.dense[ROOT](feats[model.level(0)])
        z = mu.flatten(1).float().cpu().numpy()
    return probs.float().cpu().numpy(), z


class CsvWriter:
    """Streams rows: file, leaf, leaf_probability, path, then every leaf's probability
    (``p_<leaf>``) or, with ``top_k``, the k most probable leaves and their probabilities."""

    def __init__(self, path: Path, leaves: list[str], top_k: int = 0):
        self.leaves, self.top_k = leaves, min(top_k, len(leaves)) if top_k else 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="")
        self.out = csv.writer(self.file)
        extra = ([h for k in range(1, self.top_k + 1) for h in (f"top{k}_leaf", f"top{k}_probability")]
                 if self.top_k else [f"p_{leaf}" for leaf in leaves])
        self.out.writerow(["file", "leaf", "leaf_probability", "path", *extra])

    def write(self, names: list[str], probs: np.ndarray) -> None:
        best = probs.argmax(1)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :self.top_k] if self.top_k else None
        for i, name in enumerate(names):
            leaf = self.leaves[best[i]]
            if order is None:
                extra = [f"{p:.6g}" for p in probs[i]]
            else:
                extra = [v for j in order[i] for v in (self.leaves[j], f"{probs[i, j]:.6g}")]
            self.out.writerow([name, leaf, f"{probs[i, best[i]]:.6g}", root_path(leaf), *extra])

    def close(self) -> None:
        self.file.close()


def run_assignment(model, stream: ImageStream, device, *, latents: bool = False) -> Assignments:
    """Assign every image of ``stream``, kept in memory (`api.assign_to_csv` streams instead)."""
    names, probs, zs = [], [], []
    for batch_names, x in stream.batches:
        p, z = assign_batch(model, x, device, latents)
        names += batch_names
        probs.append(p)
        if z is not None:
            zs.append(z)
    leaves = model.tree.leaves()
    return Assignments(names, leaves, np.concatenate(probs) if probs else np.zeros((0, len(leaves)), np.float32),
                       np.concatenate(zs) if zs else None)
