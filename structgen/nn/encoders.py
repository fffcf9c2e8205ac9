"""Encoders (bottom-up level 0) and the bottom-up chain (algorithm.md §1.2–1.3)."""
from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvBlock, ResBlock, conv3x3, int_linspace, make_activation
from .dense_conv import Conv2d

ENCODERS = ("cnn1", "cnn2")


def small_cnn_schedule(size_in: int, size_out: int) -> tuple[int, int]:
    """(stride, kernel) that maps ``size_in`` to exactly ``size_out`` with padding 1.

    Forward conv: out = (in + 2 - k) / s + 1, so k = in - s*(out - 1) + 2. The stride is the
    largest whole down-sampling factor; the kernel soaks up the rest. The decoder reuses this
    with the sizes swapped (conv-transpose inverts the same size relation).
    """
    stride = max(size_in // size_out, 1)
    return stride, size_in - stride * (size_out - 1) + 2


def log2_steps(image_size: int, r: int, where: str) -> int:
    """Number of factor-2 resolution steps between ``image_size`` and ``r`` (>= 1)."""
    ratio = image_size // r if r > 0 else 0
    if r < 1 or ratio * r != image_size or ratio < 2 or ratio & (ratio - 1):
        raise ValueError(
            f"{where}: image_size/r must be a power of two >= 2 for the ResNet path, "
            f"got image_size={image_size}, r={r}"
        )
    return ratio.bit_length() - 1


class SmallCnnEncoder(nn.Sequential):
    """``cnn1``: three bias-free conv -> BN -> act stages from (C_in, S, S) to (C_d, r, r).

    Channels and sizes follow int-truncated linspaces; for MNIST (r=2) that is
    12x12 s1 (28->19), 12x12 s1 (19->10), 7x7 s5 (10->2).
    """

    def __init__(self, in_channels: int, image_size: int, channels: int, r: int, act: str):
        if not 1 <= r <= image_size:
            raise ValueError(f"cnn1 encoder: need 1 <= r <= image_size, got r={r}, image_size={image_size}")
        chans = int_linspace(in_channels, channels, 4)
        sizes = int_linspace(image_size, r, 4)
        layers: list[nn.Module] = []
        for i in range(3):
            stride, kernel = small_cnn_schedule(sizes[i], sizes[i + 1])
            layers += [
                Conv2d(chans[i], chans[i + 1], kernel, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                make_activation(act),
            ]
        super().__init__(*layers)


class ResNetEncoder(nn.Sequential):
    """``cnn2``: conv3x3(C_in->8) -> ResBlock(8,8) -> n x [down-sample, ResBlock] -> BN -> act.

    n = log2(image_size / r). The down-sample is a stride-2 conv3x3 (with bias) when
    ``dim_mod_conv``, else AvgPool(3, 2, 1); either keeps the channel count.
    """

    base_channels = 8

    def __init__(self, in_channels: int, image_size: int, channels: int, r: int, act: str, dim_mod_conv: bool):
        steps = log2_steps(image_size, r, "cnn2 encoder")
        nf = self.base_channels
        chans = int_linspace(nf, channels, steps + 1)
        layers: list[nn.Module] = [conv3x3(in_channels, nf, bias=True), ResBlock(nf, nf, act)]
        for c0, c1 in zip(chans[:-1], chans[1:]):
            down = conv3x3(c0, c0, bias=True, stride=2) if dim_mod_conv else nn.AvgPool2d(3, stride=2, padding=1)
            layers += [down, ResBlock(c0, c1, act)]
        layers += [nn.BatchNorm2d(chans[-1]), make_activation(act)]
        super().__init__(*layers)


def build_encoder(
    kind: str, in_channels: int, image_size: int, channels: int, r: int, act: str, dim_mod_conv: bool
) -> nn.Module:
    """Image (B, in_channels, S, S) -> bottom-up level 0 (B, channels, r, r)."""
    if kind == "cnn1":
        # cnn1 has no separate down-sampling layers, so dim_mod_conv does not apply.
        return SmallCnnEncoder(in_channels, image_size, channels, r, act)
    if kind == "cnn2":
        return ResNetEncoder(in_channels, image_size, channels, r, act, dim_mod_conv)
    raise ValueError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODERS)}")


class BottomUp(nn.Module):
    """Encoder plus (L-1) ConvBlocks: the deterministic features d^(0..L-1), all (C, r, r).

    The reference gives these ConvBlocks mu/var heads whose outputs are never used; they are
    left out here. That removes (L-1) x 2 x (C_d * C_z * 9) parameters: 6 x 9,216 for MNIST
    and 6 x 147,456 for CIFAR (algorithm.md §1.7), with no effect on the model's function.
    """

    def __init__(
        self,
        encoder_kind: str,
        in_channels: int,
        image_size: int,
        bottom_up_channels: list[int],
        r: int,
        act: str,
        residual: bool,
        dim_mod_conv: bool,
    ):
        super().__init__()
        chans = list(bottom_up_channels)
        if not chans:
            raise ValueError("BottomUp: bottom_up_channels is empty; need at least the encoder level")
        self.encoder = build_encoder(encoder_kind, in_channels, image_size, chans[0], r, act, dim_mod_conv)
        self.levels = nn.ModuleList(
            ConvBlock(c0, c1, latent_ch=0, act=act, residual=residual, with_heads=False)
            for c0, c1 in zip(chans[:-1], chans[1:])
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.encoder(x)]
        for level in self.levels:
            features.append(level(features[-1])[0])
        return features
