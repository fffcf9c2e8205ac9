"""Batched view augmentation for the contrastive extension (algorithm.md §2).

Each image gets its own random parameters, but all images are transformed in one call (an
affine grid for crop and flip, tensor arithmetic for colour), so there is no per-sample loop.
The recipe follows the reference: random resized crop (scale 0.2-1, bicubic), horizontal flip,
colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale with p=0.2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_GRAY = torch.tensor([0.299, 0.587, 0.114])


def _uniform(n, lo, hi, g, device):
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def random_resized_crop_flip(x: torch.Tensor, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), g=None) -> torch.Tensor:
    n, dev = x.shape[0], x.device
    area = _uniform(n, *scale, g, dev)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)          # crop size as a fraction of the side
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = _uniform(n, 0, 1, g, dev) * (1 - w) * 2 - (1 - w)  # crop centre in [-1, 1] coordinates
    cy = _uniform(n, 0, 1, g, dev) * (1 - h) * 2 - (1 - h)
    flip = torch.where(torch.rand(n, generator=g, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)


def color_jitter(x: torch.Tensor, strength=(0.4, 0.4, 0.4, 0.1), p=0.8, g=None) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    n, dev = x.shape[0], x.device
    apply = (torch.rand(n, generator=g, device=dev) < p).view(n, 1, 1, 1)
    b, c, s, hue = strength
    gray_w = _GRAY.to(dev).view(1, 3, 1, 1)
    out = x * _uniform(n, 1 - b, 1 + b, g, dev).view(n, 1, 1, 1)
    mean = (out * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    out = (out - mean) * _uniform(n, 1 - c, 1 + c, g, dev).view(n, 1, 1, 1) + mean
    gray = (out * gray_w).sum(1, keepdim=True)
    out = (out - gray) * _uniform(n, 1 - s, 1 + s, g, dev).view(n, 1, 1, 1) + gray
    out = _rotate_hue(out.clamp(0, 1), _uniform(n, -hue, hue, g, dev))
    return torch.where(apply, out.clamp(0, 1), x)


def _rotate_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by shift·2π: a cheap, batched stand-in for HSV hue shift."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device)
    rgb = torch.linalg.inv(yiq)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = rgb @ rot @ yiq                                   # (n, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)


def random_grayscale(x: torch.Tensor, p=0.2, g=None) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    n = x.shape[0]
    gray = (x * _GRAY.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    apply = (torch.rand(n, generator=g, device=x.device) < p).view(n, 1, 1, 1)
    return torch.where(apply, gray, x)


def augment(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    return random_grayscale(color_jitter(random_resized_crop_flip(x, g=g), g=g), g=g)


def two_views(x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """[first views ; second views] of a batch: the layout the contrastive losses expect."""
    return torch.cat([augment(x, g), augment(x, g)])
