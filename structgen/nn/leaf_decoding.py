"""Every leaf decoder of a tree in one call, the last layer grouped over the leaves.

Each leaf decoder ends in a layer that maps a few channels to the image's 1-3. On CPU, oneDNN
runs such a layer badly: cnn1's final 12x12 transposed conv (6 -> 1 channels, MNIST) reached
about 5 GFLOP/s forward per leaf. Stacking the L leaves' weights into one grouped convolution
(groups=L, L x C_out output channels) does the same arithmetic, leaf by leaf, in half the time
(10 leaves, 256 images, forward + backward: 376 -> 186 ms; the whole step 1.14-1.25x, see
README "Benchmarks"). The earlier layers have enough channels to run well per leaf, and grouping
them measured slower, so they stay per leaf.

The weights are concatenated on every call (a few thousand numbers), so the leaves keep their
own modules: `attach`, `prune` and checkpoints see per-leaf decoders as before, and gradients
flow back to each leaf's weight through the concatenation.

Where that last layer does not run through torch's own convolution (on CPU, `dense_conv.py`:
cnn1's transposed conv as one multiply), it runs per leaf, which measured faster again (ten
leaves, forward + backward: 208-303 ms grouped, 131-162 per leaf). Grouping remains for the
layers that run natively: CUDA, and cnn2's final 3x3 conv.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense_conv import runs_natively


def _groupable(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.groups == 1 and layer.padding_mode == "zeros"


def _all_but_last(decoder: nn.Sequential, z: Tensor) -> Tensor:
    for layer in list(decoder)[:-1]:
        z = layer(z)
    return z


def _grouped_last_layer(layers: Sequence[nn.Module], hidden: Sequence[Tensor]) -> Tensor:
    """The same ``layers[i](hidden[i])`` for every leaf i, as one grouped convolution (B, L*C_out, H, W)."""
    first = layers[0]
    x = torch.cat(list(hidden), dim=1)
    # Both layer kinds keep the per-group slices along dim 0 of their weight: ConvTranspose2d's
    # weight is (in, out/groups, k, k), Conv2d's is (out, in/groups, k, k).
    weight = torch.cat([layer.weight for layer in layers], dim=0)
    bias = torch.cat([layer.bias for layer in layers]) if first.bias is not None else None
    if isinstance(first, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, bias, first.stride, first.padding, first.output_padding,
                                  len(layers), first.dilation)
    return F.conv2d(x, weight, bias, first.stride, first.padding, first.dilation, len(layers))


def _same_layout(layers: Sequence[nn.Module]) -> bool:
    # Compared by hyper-parameters, not `.weight`: reading a spectral-normalised weight runs a
    # power iteration, and a check must not change the math.
    first = layers[0]
    kind = nn.ConvTranspose2d if isinstance(first, nn.ConvTranspose2d) else nn.Conv2d
    signature = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "dilation")
    return all(isinstance(layer, kind) and (layer.bias is None) == (first.bias is None)
               and all(getattr(layer, a) == getattr(first, a) for a in signature) for layer in layers)


def decode_leaves(decoders: Sequence[nn.Sequential], latents: Sequence[Tensor]) -> Tensor:
    """(B, L, C, H, W): ``decoders[i](latents[i])`` for each of the L leaves, stacked on dim 1."""
    last = [decoder[-1] for decoder in decoders]
    if len(decoders) < 2 or not all(_groupable(layer) for layer in last) or not _same_layout(last):
        return torch.stack([decoder(z) for decoder, z in zip(decoders, latents)], dim=1)
    hidden = [_all_but_last(decoder, z) for decoder, z in zip(decoders, latents)]
    if not runs_natively(last[0], hidden[0]):
        # Run another way per leaf (dense_conv.py), the layer is faster still than grouped.
        return torch.stack([layer(h) for layer, h in zip(last, hidden)], dim=1)
    images = _grouped_last_layer(last, hidden)
    return images.view(images.shape[0], len(decoders), -1, *images.shape[2:])
