"""Per-sample negative log-likelihoods of an image under each leaf decoder's output (§1.6)."""
from __future__ import annotations

import torch

from structgen.nn.vector_math import bce_with_logits_summed


def leaf_nll(decoder_out: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, L): the negative log-likelihood of each image x[b] under leaf l's output
    decoder_out[b, l], summed over pixels.

    sigmoid: BCE of sigmoid(logits) against continuous [0,1] targets, computed from logits
    (torch's probability-space BCE clamps its logs at -100; the logit form needs no clamp).
    mse: sum of squared errors on the linear output (an implicit N(x̂, I) without constants).
    The image is broadcast over the leaves, not copied.
    """
    if decoder_out.shape[0] != x.shape[0] or decoder_out.shape[2:] != x.shape[1:]:
        raise ValueError(f"decoder output {tuple(decoder_out.shape)} does not hold images shaped like {tuple(x.shape)}")
    target = x.unsqueeze(1)
    if kind == "sigmoid":
        return bce_with_logits_summed(decoder_out, target, pixel_dims=x.dim() - 1)
    if kind == "mse":
        return (decoder_out - target).square().flatten(2).sum(2)
    raise ValueError(f"unknown likelihood {kind!r}: expected sigmoid or mse")


def to_image(decoder_out: torch.Tensor, kind: str) -> torch.Tensor:
    """Decoder output -> an image in pixel space (sigmoid for BCE, identity for mse)."""
    return torch.sigmoid(decoder_out) if kind == "sigmoid" else decoder_out
