"""Contrastive pieces of the CIFAR objective (algorithm.md §2): projection head and InfoNCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import conv3x3, make_activation


class Projection(nn.Module):
    """One bottom-up level (B, C_d, r, r) -> embedding (B, out_dim) for NT-Xent.

    conv3x3(C_d->1) -> flatten r^2 -> Linear(r^2, hidden, no bias) -> BN1d -> act -> Linear(hidden, out_dim).
    The reference also builds a softplus "sigma" Linear(hidden, out_dim) that the loss never
    reads; it is left out (1,290 parameters per level at the reference sizes).
    """

    def __init__(self, in_ch: int, r: int, act: str, hidden: int = 128, out_dim: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            conv3x3(in_ch, 1),
            nn.Flatten(),
            nn.Linear(r * r, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            make_activation(act),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, d: Tensor) -> Tensor:
        return self.net(d)


def info_nce(a: Tensor, b: Tensor, temperature: float, weights: Tensor | None = None) -> Tensor:
    """InfoNCE / NT-Xent between paired views ``a[i]`` <-> ``b[i]``, both (N, D).

    Over the 2N L2-normalised samples, sample i's loss is
    -log(exp(cos(i, pos)/T) / sum_{k != i} exp(cos(i, k)/T)); the denominator includes the
    positive. Computed as a cross-entropy over the similarity row with the self-similarity
    masked out (logsumexp, so no overflow at small T).

    ``weights`` (N,) are shared by both views of a pair, or (2N,) given per sample; they are
    detached and the result is sum(w * loss) / sum(w). Without weights: the plain mean.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"info_nce: a and b must both be (N, D) of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T) / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    partner = torch.arange(2 * n, device=z.device).roll(n)  # i <-> (i + N) mod 2N
    per_sample = F.cross_entropy(logits, partner, reduction="none")
    if weights is None:
        return per_sample.mean()
    w = weights.detach().to(per_sample.dtype)
    if w.shape == (n,):
        w = torch.cat([w, w])
    elif w.shape != (2 * n,):
        raise ValueError(f"info_nce: weights must be ({n},) or ({2 * n},), got {tuple(weights.shape)}")
    # The clamp only matters when every weight is 0 (e.g. an unreached node): then the loss is 0.
    return (w * per_sample).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
