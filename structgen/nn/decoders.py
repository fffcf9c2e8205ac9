"""Leaf decoders (algorithm.md §1.5). They return PRE-activation outputs.

For the BCE likelihood the output is a logit (the model applies the sigmoid, or better, uses
``binary_cross_entropy_with_logits``); for the sum-of-squares likelihood it is the image itself.
"""
from __future__ import annotations

from torch import nn

from .blocks import ResBlock, conv3x3, int_linspace, make_activation
from .dense_conv import ConvTranspose2d
from .encoders import log2_steps, small_cnn_schedule
from .spectral import add_spectral_norm

DECODERS = ("cnn1", "cnn2")


class SmallCnnDecoder(nn.Sequential):
    """``cnn1`` mirror: three bias-free conv-transposes (C_z, r, r) -> (C_out, S, S).

    BN + act after the first two. For MNIST: 7x7 s5 (2->10), 12x12 s1 (10->19), 12x12 s1 (19->28).
    """

    def __init__(self, latent_channels: int, out_channels: int, image_size: int, r: int, act: str):
        if not 1 <= r <= image_size:
            raise ValueError(f"cnn1 decoder: need 1 <= r <= image_size, got r={r}, image_size={image_size}")
        chans = int_linspace(latent_channels, out_channels, 4)
        sizes = int_linspace(r, image_size, 4)
        layers: list[nn.Module] = []
        for i in range(3):
            # A conv-transpose inverts the forward-conv size relation, so reuse it with sizes swapped.
            stride, kernel = small_cnn_schedule(sizes[i + 1], sizes[i])
            layers.append(ConvTranspose2d(chans[i], chans[i + 1], kernel, stride=stride, padding=1, bias=False))
            if i < 2:
                layers += [nn.BatchNorm2d(chans[i + 1]), make_activation(act)]
        super().__init__(*layers)


class ResNetDecoder(nn.Sequential):
    """``cnn2`` mirror: n x [ResBlock, up-sample] -> ResBlock(8,8) -> BN -> act -> conv3x3(8->C_out).

    n = log2(image_size / r); channels run linspace(C_z, 8, n+1). The up-sample is a bias-free
    ConvT(4, 2, 1) when ``dim_mod_conv``, else bilinear x2.
    """

    base_channels = 8

    def __init__(self, latent_channels: int, out_channels: int, image_size: int, r: int, act: str, dim_mod_conv: bool):
        steps = log2_steps(image_size, r, "cnn2 decoder")
        nf = self.base_channels
        chans = int_linspace(latent_channels, nf, steps + 1)
        layers: list[nn.Module] = []
        for c0, c1 in zip(chans[:-1], chans[1:]):
            up = (
                ConvTranspose2d(c1, c1, kernel_size=4, stride=2, padding=1, bias=False)
                if dim_mod_conv
                else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            )
            layers += [ResBlock(c0, c1, act), up]
        layers += [
            ResBlock(nf, nf, act),
            nn.BatchNorm2d(nf),
            make_activation(act),
            conv3x3(nf, out_channels, bias=True),
        ]
        super().__init__(*layers)


def build_decoder(
    kind: str,
    latent_channels: int,
    out_channels: int,
    image_size: int,
    r: int,
    act: str,
    dim_mod_conv: bool,
    spectral_norm: bool,
) -> nn.Module:
    """Leaf latent (B, latent_channels, r, r) -> pre-activation image (B, out_channels, S, S).

    ``spectral_norm`` normalises every conv of the decoder (the `decoders` placement).
    """
    if kind == "cnn1":
        # cnn1 up-samples with its conv-transposes alone, so dim_mod_conv does not apply.
        decoder: nn.Module = SmallCnnDecoder(latent_channels, out_channels, image_size, r, act)
    elif kind == "cnn2":
        decoder = ResNetDecoder(latent_channels, out_channels, image_size, r, act, dim_mod_conv)
    else:
        raise ValueError(f"unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}")
    return add_spectral_norm(decoder) if spectral_norm else decoder
