"""Batch normalisation over the global batch under DDP, on CPU (gloo) and GPU alike.

torch's SyncBatchNorm only runs on GPUs. Without it every rank normalises with its own shard's
statistics, so 2 workers on a global batch train a different model than 1 worker on that batch.
Here the per-channel sums are all-reduced with the differentiable collective, which gives the
global batch's mean and variance in the forward pass and the matching gradients in the
backward pass. The BN modules keep their identity (only `forward` is replaced), so parameter
and buffer names, checkpoints and optimiser state are untouched.
"""
from __future__ import annotations

import types
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

# torch marks its differentiable all_reduce deprecated in favour of a private module; the notice
# repeated in every DDP phase's log. Revisit when torch offers a public replacement.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)


def _global_bn_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return type(self).forward(self, x)
    dims = [d for d in range(x.dim()) if d != 1]
    count = x.new_tensor([x.numel() / x.shape[1]])
    stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
    stats = dist_fn.all_reduce(stats)
    c = x.shape[1]
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
            self.num_batches_tracked.add_(1)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """Make every BatchNorm in ``module`` normalise over all ranks while training (idempotent)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "_global_bn", False):
            m.forward = types.MethodType(_global_bn_forward, m)
            m._global_bn = True
    return module
