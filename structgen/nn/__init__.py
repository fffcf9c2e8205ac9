"""Neural-network building blocks of the CNN-TreeVAE (tensors in, tensors out; no tree logic)."""
from .blocks import ACTIVATIONS, ConvBlock, ResBlock, make_activation
from .contrastive import Projection, info_nce
from .decoders import DECODERS, build_decoder
from .encoders import ENCODERS, BottomUp, build_encoder
from .heads import Dense, Router, Transformation
from .spectral import add_spectral_norm

__all__ = [
    "ACTIVATIONS",
    "DECODERS",
    "ENCODERS",
    "BottomUp",
    "ConvBlock",
    "Dense",
    "Projection",
    "ResBlock",
    "Router",
    "Transformation",
    "add_spectral_norm",
    "build_decoder",
    "build_encoder",
    "info_nce",
    "make_activation",
]
