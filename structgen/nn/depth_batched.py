"""The heads of all tree nodes at one depth, one call per layer instead of one per node.

A 10-leaf tree has 19 nodes: each has a dense and (below the root) a transformation, each of the
9 internal ones two routers, all on 2x2 maps. That is some 250 tiny convolutions, BatchNorms,
activations and matrix products per forward, each a few microseconds of arithmetic and a fixed
cost of dispatch and autograd; on 2 CPU threads the heads took 60-75 ms of a 450 ms training
step and ran no faster than on one thread. The nodes of one depth share their layer shapes, so
their layers run together, on tensors (k nodes, B, ...):

* what reads the depth's bottom-up feature (every node's dense, every internal node's posterior
  router's first conv) is one convolution, the nodes' weights stacked on the output channels;
* what reads a node's own input (transformations read the parent's sample, prior routers the
  node's) is one batched multiply of k small matrices per layer
  (``dense_conv.stacked_small_conv``; the routers' linear layers: ``bmm``);
* every BatchNorm is one BatchNorm over the k nodes' channels side by side.

The arithmetic is the same per node (sums in another order only); BatchNorm statistics are per
node and channel as before, and running statistics are written back to each node's own module.
Nodes keep their own modules and parameters (``attach``, ``prune`` and checkpoints are
untouched); the stacking happens at call time, and gradients flow back through it to each
node's weights. Node by node, as before, where the batched form would differ: the layers would
not run as small multiplies (CUDA, autocast, ``dense_conv.native_convolutions()``), the modules
differ, a BatchNorm keeps a cumulative average (momentum None) or takes its statistics over all
workers (a multi-worker run: ``runtime.global_batchnorm``), or router dropout draws noise (its
draws would come in another order).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBlock
from .dense_conv import conv_with_weight, runs_as_small_multiply, stacked_small_conv
from .heads import Dense, Router, Transformation
from .vector_math import softplus


def dense_outputs(denses: Sequence[Dense], d: Tensor) -> tuple[Tensor, Tensor]:
    """``dense(d)`` of every node as one convolution: (mu, var), each (k, B, C_z, r, r)."""
    if len(denses) == 1:
        return tuple(t.unsqueeze(0) for t in denses[0](d))
    # Reading `.weight` runs a spectral-normalised layer's power iteration, once per forward as
    # calling the layer would.
    weight = torch.cat([dense.mu.weight for dense in denses] + [dense.var.weight for dense in denses])
    out = conv_with_weight(denses[0].mu, d, weight)
    mu, var = out.unflatten(1, (2, len(denses), -1)).transpose(0, 2).unbind(1)
    return mu, softplus(var)


def transformation_outputs(transforms: Sequence[Transformation], parents: Tensor) -> tuple[Tensor, Tensor]:
    """``t(z)`` of every node, ``parents`` (k, B, C_z, r, r) holding each node's parent sample:
    the priors (mu_p, var_p), each (k, B, C_z, r, r); batched where the blocks allow it."""
    blocks = [t.block for t in transforms]
    if len(blocks) == 1 or not _stackable(blocks, parents[0]):
        return _stacked_pairs([t(z) for t, z in zip(transforms, parents)])
    k = len(blocks)
    convs = [list(_layers(block, nn.Conv2d)) for block in blocks]
    norms = [list(_layers(block, nn.BatchNorm2d)) for block in blocks]
    act = blocks[0].body[2]                   # a ConvBlock's body: (conv, BatchNorm, activation) x 3
    hw = tuple(parents.shape[3:])
    h, channels_last = parents.flatten(2), False                         # (k, B, C*H*W)
    for stage in range(len(norms[0])):
        layer = convs[0][stage]
        weights = torch.stack([c[stage].weight for c in convs])
        h, (c, _, _) = stacked_small_conv(layer, h, weights, hw, channels_last, out_channels_last=True)
        h = act(_stacked_batch_norm([n[stage] for n in norms], h, c))
        channels_last = True
    heads = torch.stack([torch.cat([block.mu.weight, block.var.weight]) for block in blocks])
    out, (c, _, _) = stacked_small_conv(blocks[0].mu, h, heads, hw, channels_last, out_channels_last=False)
    mu, var = out.view(k, -1, c, *hw).chunk(2, dim=2)
    return mu, softplus(var)


def router_logits(routers: Sequence[Router], inputs: Tensor, shared: bool) -> Tensor:
    """Each router's logit, (k, B), batched where the routers allow it. ``inputs`` is what every
    router reads, (B, C, r, r), when ``shared`` (the posterior routers of one depth read the same
    bottom-up feature); else one input per router, (k, B, C, r, r) (the prior routers read their
    own node's sample)."""
    each = [inputs] * len(routers) if shared else inputs
    stages = [_mlp_stages(router.mlp) for router in routers]
    if (len(routers) == 1 or any(s is None for s in stages) or len({type(s[2]) for s in stages}) > 1
            or not _same_parameter_shapes(routers)
            or routers[0].squeeze.bias is not None or not _norms_alike([bn for s in stages for bn in s[1]])
            or not (shared or runs_as_small_multiply(routers[0].squeeze, each[0]))):
        return torch.stack([router(x) for router, x in zip(routers, each)])
    linears, norms = [s[0] for s in stages], [s[1] for s in stages]
    squeeze = routers[0].squeeze
    weights = torch.stack([router.squeeze.weight for router in routers])          # (k, 1, C, 3, 3)
    if shared:
        h = conv_with_weight(squeeze, inputs, weights.flatten(0, 1)).flatten(2).transpose(0, 1)
    else:
        h, _ = stacked_small_conv(squeeze, inputs.flatten(2), weights, tuple(inputs.shape[3:]),
                                  False, out_channels_last=False)
    act = stages[0][2]                                                             # (k, B, r*r) from here
    for stage in range(len(norms[0])):
        h = torch.bmm(h, torch.stack([lin[stage].weight for lin in linears]).transpose(1, 2))
        h = act(_stacked_batch_norm([n[stage] for n in norms], h, h.shape[2]))
    last = [lin[-1] for lin in linears]
    logits = torch.baddbmm(torch.stack([lin.bias for lin in last]).unsqueeze(1), h,
                           torch.stack([lin.weight for lin in last]).transpose(1, 2))  # (k, B, 1)
    return logits.squeeze(2)


def _stacked_pairs(pairs: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def _mlp_stages(mlp: nn.Sequential) -> tuple[list[nn.Linear], list[nn.BatchNorm1d], nn.Module] | None:
    """A router's MLP as (linears, BatchNorms, activation) where it has the layout batched here:
    Flatten, then (bias-free Linear, BatchNorm1d, activation, Dropout that draws nothing) per
    hidden layer, then a Linear with a bias. None otherwise (e.g. dropout in training: its random
    draws per node would come in another order)."""
    layers = list(mlp)
    hidden, last = layers[1:-1], layers[-1]
    if not isinstance(layers[0], nn.Flatten) or not isinstance(last, nn.Linear) or last.bias is None or len(hidden) % 4:
        return None
    stages = [hidden[i:i + 4] for i in range(0, len(hidden), 4)]
    act = stages[0][2] if stages else None
    for linear, norm, activation, dropout in stages:
        if not (isinstance(linear, nn.Linear) and linear.bias is None and isinstance(norm, nn.BatchNorm1d)
                and type(activation) is type(act) and isinstance(dropout, nn.Dropout)
                and (dropout.p == 0 or not dropout.training)):
            return None
    return [s[0] for s in stages] + [last], [s[1] for s in stages], act


def _layers(block: ConvBlock, kind: type) -> list[nn.Module]:
    return [m for m in block.body if isinstance(m, kind)]


def _stackable(blocks: Sequence[ConvBlock], z: Tensor) -> bool:
    """Whether the blocks run as one: the same layers, each a small multiply, BatchNorms that
    update alike (a momentum, so the running average is the same per node), no residual."""
    first = blocks[0]
    norms = [bn for block in blocks for bn in _layers(block, nn.BatchNorm2d)]
    same_layers = all([type(m) for m in block.body] == [type(m) for m in first.body] for block in blocks)
    if (not same_layers or not _same_parameter_shapes(blocks) or not _norms_alike(norms)
            or any(block.residual or not block.with_heads for block in blocks)):
        return False
    # Every layer maps an r x r map with at most the block's widest channel count: the first
    # conv and the heads (which read the most channels) decide for all.
    widest = z.new_empty(1, max(first.mu.in_channels, first.body[0].in_channels), *z.shape[2:])
    return runs_as_small_multiply(first.body[0], z) and runs_as_small_multiply(first.mu, widest)


def _same_parameter_shapes(modules: Sequence[nn.Module]) -> bool:
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in modules]
    return all(s == shapes[0] for s in shapes)


def _norms_alike(norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> bool:
    """Whether these BatchNorms update alike, so that one call over their channels side by side
    is each of them: plain BatchNorms running their class's own forward (not SyncBatchNorm, not
    the global-batch statistics of a multi-worker run, `runtime.global_batchnorm`, which only
    their own forward computes), the same mode, eps and momentum (not None: a cumulative average
    would differ per node with its age), with affine parameters and running statistics."""
    first = norms[0] if norms else None
    return all(type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d) and "forward" not in vars(bn)
               and bn.momentum is not None and bn.affine and bn.track_running_stats and bn.training == first.training
               and (bn.momentum, bn.eps) == (first.momentum, first.eps) for bn in norms)


def _stacked_batch_norm(norms: Sequence[nn.modules.batchnorm._BatchNorm], h: Tensor, channels: int) -> Tensor:
    """Each of k BatchNorms on its own node's channels: ``h`` (k, B, [H*W*]C), channels last,
    in and out; statistics per node and channel, as k separate BatchNorms compute them."""
    k, batch = h.shape[:2]
    side_by_side = h.view(k, -1, channels).transpose(0, 1).reshape(-1, k * channels)   # (B*H*W, k*C)
    first = norms[0]
    running_mean = torch.cat([bn.running_mean for bn in norms])
    running_var = torch.cat([bn.running_var for bn in norms])
    out = F.batch_norm(side_by_side, running_mean, running_var,
                       torch.cat([bn.weight for bn in norms]), torch.cat([bn.bias for bn in norms]),
                       first.training, first.momentum, first.eps)
    if first.training:
        # F.batch_norm updated the stacked copies; each node's module keeps its own.
        with torch.no_grad():
            torch._foreach_copy_([bn.running_mean for bn in norms], list(running_mean.split(channels)))
            torch._foreach_copy_([bn.running_var for bn in norms], list(running_var.split(channels)))
            torch._foreach_add_([bn.num_batches_tracked for bn in norms], 1)
    return out.view(-1, k, channels).transpose(0, 1).reshape(k, batch, -1)
