"""Build the trained module (UNet + signal embedding) from plain data, so a checkpoint rebuilds
the architecture it holds before loading its weights."""
from __future__ import annotations

from structgen.diffusion.conditioning import ConditionalUNet, SignalEmbedding
from structgen.diffusion.unet import UNet, UNetSpec


def signal_spec(kind: str, conditioner) -> dict:
    return {"kind": kind, "n_leaves": conditioner.n_leaves, "n_nodes": conditioner.paths.n_nodes,
            "z_dim": conditioner.z_dim}


def build_model(unet_spec: UNetSpec | dict, signal: dict) -> ConditionalUNet:
    if isinstance(unet_spec, dict):
        unet_spec = UNetSpec(**{**unet_spec, "image_shape": tuple(unet_spec["image_shape"])})
    return ConditionalUNet(UNet(unet_spec), SignalEmbedding(signal["kind"], unet_spec.emb_dim, signal["n_leaves"],
                                                            signal["n_nodes"], signal["z_dim"]))
