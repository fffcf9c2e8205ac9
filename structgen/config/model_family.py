"""Which encoder/decoder family fits an image shape, and which sides a family can take.

Kept free of torch so that config validation can answer before anything heavy is imported:
a folder of 48x48 photos with `model.encoder: cnn2` must fail with the sides cnn2 takes, not
with a shape error in the first forward pass.
"""
from __future__ import annotations

MAX_SIDE = 512


def cnn2_sides(r: int, max_side: int = MAX_SIDE) -> list[int]:
    """cnn2 halves the side log2(side / r) times: r * 2, r * 4, ..."""
    sides, side = [], 2 * r
    while side <= max_side:
        sides.append(side)
        side *= 2
    return sides


def fits(family: str, side: int, r: int) -> bool:
    if family == "cnn2":
        return side in cnn2_sides(r)
    return r < side                   # cnn1's stride/kernel schedule maps any larger side onto r


def choose_family(encoder: str, shape: tuple[int, int, int], r: int) -> str:
    """``encoder`` itself, or for ``auto``: cnn2 (the CIFAR ResNet) for RGB images whose side it
    takes, else cnn1 (the MNIST CNN), which takes any side above r."""
    if encoder != "auto":
        return encoder
    channels, side, _ = shape
    return "cnn2" if channels == 3 and fits("cnn2", side, r) else "cnn1"


def sides_message(family: str, r: int) -> str:
    """The image sides ``family`` takes at representation_dim ``r``, for error messages."""
    if family == "cnn2":
        return f"cnn2 with model.representation_dim = {r} takes sides {', '.join(map(str, cnn2_sides(r)))}"
    return f"cnn1 with model.representation_dim = {r} takes any side from {r + 1} to {MAX_SIDE}"
