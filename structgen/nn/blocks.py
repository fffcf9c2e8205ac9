"""Small building blocks shared by encoders, decoders and tree heads (algorithm.md §1.2–1.3)."""
from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from .dense_conv import Conv2d
from .vector_math import softplus

ACTIVATIONS = ("swish", "leaky_relu", "relu")


def make_activation(name: str) -> nn.Module:
    """The hidden-layer nonlinearity named by the config key ``act_function``."""
    if name == "swish":
        return nn.SiLU()
    if name == "leaky_relu":
        # 0.3 is the slope of the original TreeVAE (and the reference FMNIST config).
        return nn.LeakyReLU(negative_slope=0.3)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def conv3x3(in_ch: int, out_ch: int, bias: bool = False, stride: int = 1) -> Conv2d:
    """3x3 convolution that keeps the spatial size at stride 1."""
    return Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


class ConvBlock(nn.Module):
    """Three conv3x3 -> BN -> act stages (in->in, in->in, in->out) plus optional mu/var heads.

    Used for the bottom-up chain (without heads) and, inside ``Transformation``, for the
    top-down prior (with heads). ``residual`` adds the block input to its output only when
    ``in_ch == out_ch``; otherwise there is nothing of matching shape to add, and
    ``self.residual`` records that it is off.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        latent_ch: int,
        act: str,
        residual: bool,
        with_heads: bool = True,
    ):
        super().__init__()
        if with_heads and latent_ch < 1:
            raise ValueError(f"ConvBlock({in_ch}->{out_ch}) with heads needs latent_ch >= 1, got {latent_ch}")
        stages = []
        for a, b in ((in_ch, in_ch), (in_ch, in_ch), (in_ch, out_ch)):
            stages += [conv3x3(a, b), nn.BatchNorm2d(b), make_activation(act)]
        self.body = nn.Sequential(*stages)
        for layer in self.body:
            if isinstance(layer, Conv2d):
                layer.channels_last_output = True   # each feeds a BatchNorm (dense_conv.Conv2d)
        self.residual = bool(residual) and in_ch == out_ch
        self.with_heads = with_heads
        if with_heads:
            self.mu = conv3x3(out_ch, latent_ch)
            self.var = conv3x3(out_ch, latent_ch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        h = self.body(x)               # channels-last where its convs ran as small multiplies
        if self.residual:
            h = h + x
        if not self.with_heads:
            return h.contiguous(), None, None
        # softplus output is a variance (not a std), as in the reference.
        return h.contiguous(), self.mu(h), softplus(self.var(h))


class ResBlock(nn.Module):
    """Pre-activation residual block: three BN -> act -> conv3x3 units, out = skip + 0.1*residual.

    Units map fin->fin, fin->h, h->fout with h = min(fin, fout). The 3x3 convs carry a bias
    (the reference's parameter counts need it); the skip is identity, or a bias-free 1x1 conv
    when the channel count changes. The 0.1 keeps the residual branch small at init.
    """

    def __init__(self, fin: int, fout: int, act: str):
        super().__init__()
        hidden = min(fin, fout)
        units = []
        for a, b in ((fin, fin), (fin, hidden), (hidden, fout)):
            units += [nn.BatchNorm2d(a), make_activation(act), conv3x3(a, b, bias=True)]
        self.residual = nn.Sequential(*units)
        self.skip = nn.Identity() if fin == fout else Conv2d(fin, fout, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + 0.1 * self.residual(x)


def int_linspace(start: float, stop: float, num: int) -> list[int]:
    """``numpy.linspace(start, stop, num, dtype=int)``: the reference's channel/size schedule.

    Truncation (not rounding) is what gives [1, 11, 21, 32] and [28, 19, 10, 2] for MNIST.
    """
    return [int(v) for v in np.linspace(start, stop, num, dtype=int)]
