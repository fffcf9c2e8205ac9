"""The denoising UNet, in the improved-diffusion style (algorithm.md §5.3).

Sinusoidal timestep embedding → MLP (dim → 4·dim); residual blocks whose second norm is
modulated by the embedding (scale-shift: norm(h)·(1+scale)+shift); attention at the configured
feature-map sizes in **pixels** (the reference compares them with downsample factors, so its
"16" never fires, §8.3; here a size that never occurs is an error) and always in the middle
block; dropout; a zero-initialised output convolution, so training starts from ε̂ = 0.

The input is the noisy image concatenated with the VAE image (2·C channels, DiffuseVAE
formulation 1). Images whose side is not a multiple of 2^(levels-1) (28×28) are zero-padded
to the next multiple (32) and the output is cropped back.

The conditioning signal (leaf / path embedding, `conditioning.py`) arrives as a vector of
width 4·dim that is added to the time embedding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetSpec:
    """What it takes to rebuild the network (stored in checkpoints)."""
    image_shape: tuple[int, int, int]
    dim: int = 64
    dim_mults: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    n_residual: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.3
    n_heads: int = 8

    @classmethod
    def from_config(cls, d, image_shape) -> "UNetSpec":
        return cls(tuple(image_shape), d.dim, list(d.dim_mults), d.n_residual, list(d.attn_resolutions), d.dropout,
                   d.n_heads)

    @property
    def emb_dim(self) -> int:
        return 4 * self.dim

    @property
    def padded_side(self) -> int:
        m = 2 ** (len(self.dim_mults) - 1)
        return math.ceil(self.image_shape[1] / m) * m

    def level_sizes(self) -> list[int]:
        return [self.padded_side // 2 ** i for i in range(len(self.dim_mults))]

    def validate(self) -> None:
        c, h, w = self.image_shape
        if h != w:
            raise ValueError(f"the UNet expects square images; got {h}x{w}")
        sizes = self.level_sizes()
        bad = sorted(set(self.attn_resolutions) - set(sizes))
        if bad:
            raise ValueError(f"diffusion.attn_resolutions {bad} never occur: with a {self.padded_side}px input and "
                             f"{len(self.dim_mults)} levels the feature maps are {sizes} pixels")
        for ch in {self.dim * m for m in self.dim_mults}:
            if ch % self.n_heads:
                raise ValueError(f"diffusion.n_heads = {self.n_heads} must divide every level's channels "
                                 f"({ch} = dim {self.dim} x multiplier)")

    def to_dict(self) -> dict:
        return asdict(self)


def norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in the reference; narrow test-sized layers fall back to a divisor.
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) integer timesteps -> (B, dim) [cos | sin] features at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * ch_out))
        self.out_norm = norm(ch_out)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        self.skip = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    def __init__(self, ch: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm = norm(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))                 # (B, 3C, N)
        q, k, v = qkv.reshape(b, 3, self.n_heads, c // self.n_heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)                      # (B, heads, N, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)


class Resample(nn.Module):
    """Halve the feature map (stride-2 convolution) or double it (nearest upsampling, then a convolution)."""

    def __init__(self, ch: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(ch, ch, 3, stride=1 if up else 2, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest") if self.up else x)


class Stage(nn.ModuleList):
    """Layers applied in order, residual blocks given the embedding (improved-diffusion's TimestepEmbedSequential)."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    def __init__(self, spec: UNetSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        c = spec.image_shape[0]
        dim, emb_dim, sizes = spec.dim, spec.emb_dim, spec.level_sizes()
        self.time_embed = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def res(ch_in, ch_out, size):
            layers = [ResBlock(ch_in, ch_out, emb_dim, spec.dropout)]
            if size in spec.attn_resolutions:
                layers.append(Attention(ch_out, spec.n_heads))
            return layers

        self.down = nn.ModuleList([Stage([nn.Conv2d(2 * c, dim, 3, padding=1)])])
        skips, ch = [dim], dim
        for level, mult in enumerate(spec.dim_mults):
            for _ in range(spec.n_residual):
                self.down.append(Stage(res(ch, dim * mult, sizes[level])))
                ch = dim * mult
                skips.append(ch)
            if level < len(spec.dim_mults) - 1:
                self.down.append(Stage([Resample(ch, up=False)]))
                skips.append(ch)
        self.middle = Stage([ResBlock(ch, ch, emb_dim, spec.dropout), Attention(ch, spec.n_heads),
                             ResBlock(ch, ch, emb_dim, spec.dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(spec.dim_mults))):
            for i in range(spec.n_residual + 1):
                layers = res(ch + skips.pop(), dim * spec.dim_mults[level], sizes[level])
                ch = dim * spec.dim_mults[level]
                if level and i == spec.n_residual:
                    layers.append(Resample(ch, up=True))
                self.up.append(Stage(layers))
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero(nn.Conv2d(ch, c, 3, padding=1)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, recon: torch.Tensor,
                signal: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ for noisy images x_t (B,C,H,W) at timesteps t (B,), given the VAE image ``recon``
        (B,C,H,W) and an optional signal embedding (B, 4·dim)."""
        side = x_t.shape[-1]
        pad = self.spec.padded_side - side
        h = torch.cat([x_t, recon], dim=1)
        if pad:
            h = F.pad(h, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        emb = self.time_embed(timestep_embedding(t, self.spec.dim))
        if signal is not None:
            emb = emb + signal
        hs = []
        for stage in self.down:
            h = stage(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb)
        h = self.out(h)
        if pad:
            h = h[..., pad // 2: pad // 2 + side, pad // 2: pad // 2 + side]
        return h
