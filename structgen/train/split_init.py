"""A decided start for a new split (`training.split_init: kmeans`).

A fresh sub-tree's two children start alike, so at α ≈ 0 the reconstruction gives its router
no reason to prefer one child, and a short sub-tree phase (a few dozen steps on a small subset)
ends with a router that sends every image to the same side at q ≈ 0.3–0.7: the prune then finds
one child with no images. Here the leaf's images are first split in two by 2-means on the
bottom-up feature its posterior router reads, and both routers are fitted to that split, so
each child decodes its own half from the first step; the sub-tree's training then refines it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from structgen.data.memory_loader import to_device_float
from structgen.models.treevae import SubTree, TreeVAE

BATCH = 128
LR = 1e-3


def bottom_up_and_latent(model: TreeVAE, images: np.ndarray, indices: np.ndarray, leaf: str, level: int,
                         device, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaf's images through the frozen tree (eval mode): the bottom-up feature at ``level``
    and the posterior sample at ``leaf``."""
    was_training = model.training
    model.eval()
    features, latents = [], []
    with torch.no_grad():
        for start in range(0, len(indices), batch):
            x = to_device_float(torch.from_numpy(images[indices[start:start + batch]]), device)
            feats, z, _ = model.route_to(x, leaf)
            features.append(feats[level])
            latents.append(z)
    model.train(was_training)
    return torch.cat(features), torch.cat(latents)


def two_means(features: torch.Tensor, seed: int) -> np.ndarray:
    """0/1 per row: 2-means on the standardised, flattened features."""
    from sklearn.cluster import KMeans

    flat = features.flatten(1).double().cpu()
    flat = (flat - flat.mean(0)) / flat.std(0).clamp_min(1e-6)
    return KMeans(2, n_init=4, random_state=seed).fit_predict(flat.numpy())


def init_split(model: TreeVAE, subtree: SubTree, images: np.ndarray, indices, *, steps: int, seed: int,
               device) -> dict:
    """Fit ``subtree``'s two routers to a 2-means split of its leaf's images; returns a summary
    (the split's sizes and how often the fitted posterior router agrees with it)."""
    indices = np.asarray(indices)
    d, z = bottom_up_and_latent(model, images, indices, subtree.leaf, subtree.parent_level, device)
    left = torch.from_numpy(two_means(d, seed) == 0).float().to(device)
    routers = [subtree.router_q, subtree.router]
    optimizer = torch.optim.Adam([p for r in routers for p in r.parameters()], lr=LR)
    generator = np.random.default_rng(seed)
    for router in routers:
        router.train()
    for _ in range(steps):
        b = torch.from_numpy(generator.choice(len(indices), min(BATCH, len(indices)), replace=False)).to(device)
        loss = (F.binary_cross_entropy_with_logits(subtree.router_q(d[b]), left[b])
                + F.binary_cross_entropy_with_logits(subtree.router(z[b]), left[b]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    subtree.router_q.eval()
    with torch.no_grad():
        agree = ((subtree.router_q(d) > 0).float() == left).float().mean().item()
    subtree.router_q.train()
    return {"left": int(left.sum().item()), "images": len(indices), "router_agrees": round(agree, 4)}
