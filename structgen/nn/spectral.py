"""Where spectral normalisation goes: the placements of `model.spectral_norm`.

* ``none``: nowhere.
* ``decoders``: every conv of every leaf decoder. What the reference config's comment promises
  ("only applied to decoders") and what `spectral_norm: true` meant here before placements.
* ``reference``: what the reference code actually does (algorithm.md §8.8), and so what its
  results came from: the encoder's convs, the first two convs of every bottom-up ConvBlock, and
  the denses of nodes at depth >= 2. Never decoders, transformations, routers, or depth-0/1 denses.

Every placement is a function of the model spec and a node's depth alone, so a checkpoint's
topology rebuilds the same parametrized modules (their state-dict keys differ from plain ones).
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .encoders import BottomUp, ResNetEncoder

# The reference builds the depth-1 denses with the initial tree, plainly, and every deeper one
# inside a grown sub-tree, whose Dense receives the flag (positionally). Keying on depth rather
# than on history keeps the rebuild from topology exact; the two agree for initial_depth 1.
GROWN_DEPTH = 2


def conv_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every conv / conv-transpose weight inside ``module`` (in place)."""
    for m in conv_layers(module):
        _spectral_norm(m)
    return module


def normalises(placement: str, part: str, depth: int = 0) -> bool:
    """Whether ``placement`` spectral-normalises ``part`` ("bottom_up", "dense" or "decoder")
    of a node at ``depth``."""
    if placement == "decoders":
        return part == "decoder"
    if placement == "reference":
        return part == "bottom_up" or (part == "dense" and depth >= GROWN_DEPTH)
    return False


def reference_bottom_up_convs(bottom_up: BottomUp) -> list[nn.Module]:
    """The bottom-up convs the reference spectral-normalises.

    Encoder: every conv, except cnn2's stride-2 down-sampling convs (`dim_mod_conv`), which the
    reference builds between its ResNet blocks without the flag. ConvBlocks: conv0 and conv1 of
    the three; the reference also normalises the dead mu/sigma heads (absent here), not conv2.
    """
    encoder = bottom_up.encoder
    plain = []
    if isinstance(encoder, ResNetEncoder):
        plain = [m for m in encoder.children() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    convs = [m for m in conv_layers(encoder) if not any(m is p for p in plain)]
    for block in bottom_up.levels:
        convs += conv_layers(block.body)[:2]
    return convs


def apply_to_bottom_up(placement: str, bottom_up: BottomUp) -> BottomUp:
    if normalises(placement, "bottom_up"):
        for m in reference_bottom_up_convs(bottom_up):
            _spectral_norm(m)
    return bottom_up
