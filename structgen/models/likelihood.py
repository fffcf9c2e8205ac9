"""Per-sample negative log-likelihoods of an image under a leaf decoder's output (§1.6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nll(decoder_out: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over pixels, one value per sample.

    sigmoid: BCE of sigmoid(logits) against continuous [0,1] targets, computed from logits
    (torch's probability-space BCE clamps its logs at -100; the logit form needs no clamp).
    mse: sum of squared errors on the linear output (an implicit N(x̂, I) without constants).
    """
    if kind == "sigmoid":
        per_pixel = F.binary_cross_entropy_with_logits(decoder_out, x, reduction="none")
    elif kind == "mse":
        per_pixel = (decoder_out - x) ** 2
    else:
        raise ValueError(f"unknown likelihood {kind!r}: expected sigmoid or mse")
    return per_pixel.flatten(1).sum(1)


def to_image(decoder_out: torch.Tensor, kind: str) -> torch.Tensor:
    """Decoder output -> an image in pixel space (sigmoid for BCE, identity for mse)."""
    return torch.sigmoid(decoder_out) if kind == "sigmoid" else decoder_out
