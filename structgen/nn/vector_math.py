"""Softplus and BCE-from-logits built on exp and log, with their derivatives written out.

torch's CPU kernels for ``softplus``, ``log_sigmoid`` (inside ``binary_cross_entropy_with_logits``)
and ``log1p`` run one element at a time, while ``exp``, ``log`` and ``sigmoid`` are vectorised:
on 2M floats (256 images x 10 leaves x 784 pixels, 2 threads, AVX-512) softplus took 9.7 ms,
log1p 8.6, exp 1.0, log 1.3, sigmoid 0.4. Both functions here use the stable form
``softplus(z) = max(z, 0) + log(1 + exp(-|z|))``. ``log(1 + e)`` in place of ``log1p(e)``
differs by at most ~1e-7 per element (where ``1 + e`` rounds), far below a float32 sum over
pixels; the backward passes are the exact derivatives (``sigmoid(z)`` and ``sigmoid(z) - t``),
so gradients are as accurate as autograd's. Inputs in half precision are computed in float32,
as autocast does for these ops.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _softplus_values(z: Tensor) -> Tensor:
    return z.abs().neg_().exp_().add_(1.0).log_().add_(z.clamp_min(0.0))


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        z32 = z.float()
        ctx.save_for_backward(z32)
        ctx.in_dtype = z.dtype
        return _softplus_values(z32)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (z32,) = ctx.saved_tensors
        return torch.sigmoid(z32).mul_(grad).to(ctx.in_dtype)


def softplus(z: Tensor) -> Tensor:
    """``F.softplus(z)`` (beta 1) in float32."""
    return _Softplus.apply(z)


class _SummedBCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, pixel_dims: int) -> Tensor:
        z, t = logits.float(), target.float()
        ctx.save_for_backward(z, t)
        ctx.dtypes = (logits.dtype, target.dtype)
        per_pixel = _softplus_values(z).sub_(z * t)
        return per_pixel.flatten(-pixel_dims).sum(-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, t = ctx.saved_tensors
        logits_dtype, target_dtype = ctx.dtypes
        per_pixel = grad.view(*grad.shape, *([1] * (z.dim() - grad.dim())))
        grad_logits = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.sigmoid(z).sub_(t).mul_(per_pixel).to(logits_dtype)
        if ctx.needs_input_grad[1]:
            grad_target = (-(z * per_pixel)).sum_to_size(t.shape).to(target_dtype)   # summed over broadcast axes
        return grad_logits, grad_target, None


def bce_with_logits_summed(logits: Tensor, target: Tensor, pixel_dims: int) -> Tensor:
    """``binary_cross_entropy_with_logits(logits, target)`` summed over the last ``pixel_dims``
    dimensions, in float32. ``target`` may broadcast against ``logits`` (same number of
    dimensions, size 1 where it repeats), so one image scores against every leaf without a copy."""
    if target.dim() != logits.dim():
        raise ValueError(f"target has {target.dim()} dimensions, logits {logits.dim()}: align them with size-1 axes")
    return _SummedBCE.apply(logits, target, pixel_dims)
