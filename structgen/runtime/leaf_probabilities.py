"""Leaf probabilities over a whole split, sharded across ranks and gathered.

Split selection, pruning and evaluation need q(leaf|x) for every training image. Each rank
scores a strided shard (padded to equal length so collectives line up) and the pieces are
gathered back into dataset order.
"""
from __future__ import annotations

import numpy as np
import torch

from structgen.data.memory_loader import to_device_float
from structgen.models.treevae import TreeVAE
from structgen.runtime.context import Context


@torch.no_grad()
def leaf_probabilities(model: TreeVAE, images: np.ndarray, ctx: Context, batch_size: int = 1000) -> torch.Tensor:
    """(N, n_leaves) on CPU, identical on every rank."""
    n = len(images)
    per_rank = -(-n // ctx.world_size)
    positions = torch.arange(per_rank * ctx.world_size) % n       # wrap-around padding
    mine = positions[ctx.rank::ctx.world_size]
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x = to_device_float(torch.from_numpy(np.asarray(images[idx.numpy()])), ctx.device)
        parts.append(model.predict(x))
    model.train(was_training)
    local = torch.cat(parts)
    gathered = ctx.all_gather_cat(local.contiguous())             # rank-major order
    # Row k of rank r is dataset position r + k*W: undo the striding.
    order = torch.arange(per_rank * ctx.world_size).view(ctx.world_size, per_rank).t().reshape(-1)
    return gathered[order][:n].cpu()
