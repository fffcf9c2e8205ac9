"""What the UNet is told about the tree, besides the VAE image (algorithm.md §5.5).

`Condition` is a batch of conditioning inputs; `SignalEmbedding` turns its signal into a
vector added to the time embedding:

* ``none``: no signal; the VAE image alone conditions the model.
* ``leaf`` (Diffuse-TreeVAE): a learned embedding of the leaf index. The reference feeds the
  index as a float through an MLP, which imposes an order on leaves; a lookup table does not.
* ``path`` (TreeDiffusion): Σ over the nodes on the root-to-leaf path of
  MLP(flattened z_node) + Emb(node id). Paths have different lengths; they are padded to the
  tree's depth + 1 with a mask (`PathTable`), so building them is two gathers, not a loop.

Classifier-free guidance: ``keep`` (B,) is 1 for conditioned rows and 0 for dropped ones; a
dropped row sees a zero VAE image and a zero signal. Dropping is per sample and works for every
signal kind (the reference drops whole batches and fails for paths, §8.17).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from structgen.diffusion.unet import UNet, UNetSpec
from structgen.tree.topology import Tree

KINDS = ("none", "leaf", "path")


@dataclass
class Condition:
    recon: torch.Tensor                        # (B, C, H, W) VAE image in [-1, 1]
    keep: torch.Tensor                         # (B,) 1 = conditioned, 0 = dropped
    leaf: torch.Tensor | None = None           # (B,) leaf index (BFS leaf order)
    path_z: torch.Tensor | None = None         # (B, P, z_dim) latents along the path, leaf first
    path_ids: torch.Tensor | None = None       # (B, P) BFS node ids (padding: 0)
    path_mask: torch.Tensor | None = None      # (B, P) 1 for real nodes, 0 for padding

    def __len__(self) -> int:
        return self.recon.shape[0]

    @staticmethod
    def cat(parts: list["Condition"]) -> "Condition":
        return Condition(**{f.name: (None if getattr(parts[0], f.name) is None
                                     else torch.cat([getattr(p, f.name) for p in parts]))
                            for f in fields(Condition)})

    def dropped(self) -> "Condition":
        """The unconditional version: every row dropped."""
        return replace(self, keep=torch.zeros_like(self.keep))

    def with_dropout(self, rate: float, generator: torch.Generator | None = None) -> "Condition":
        """Drop each row's condition independently with probability ``rate`` (training)."""
        if rate <= 0:
            return self
        u = torch.rand(self.keep.shape, generator=generator, device=self.keep.device)
        return replace(self, keep=self.keep * (u >= rate).to(self.keep.dtype))

    def recon_input(self) -> torch.Tensor:
        return self.recon * self.keep.view(-1, 1, 1, 1)


class PathTable:
    """Per-leaf root-to-leaf node ids as a padded (L, depth+1) tensor and its mask."""

    def __init__(self, tree: Tree):
        leaves, bfs = tree.leaves(), tree.bfs()
        order = {p: i for i, p in enumerate(bfs)}
        width = tree.max_depth() + 1
        ids = torch.zeros(len(leaves), width, dtype=torch.long)
        mask = torch.zeros(len(leaves), width)
        for i, leaf in enumerate(leaves):            # once per tree, not per sample
            path = [order[p] for p in tree.path_to_root(leaf)]
            ids[i, :len(path)] = torch.tensor(path)
            mask[i, :len(path)] = 1.0
        self.ids, self.mask = ids, mask
        self.n_nodes = len(bfs)

    def gather(self, z_all: torch.Tensor, leaf: torch.Tensor):
        """z_all (B, n_nodes, z_dim) in BFS order, leaf (B,) -> path_z, path_ids, path_mask."""
        ids = self.ids.to(leaf.device)[leaf]                                  # (B, P)
        mask = self.mask.to(leaf.device, z_all.dtype)[leaf]
        path_z = torch.gather(z_all, 1, ids[..., None].expand(-1, -1, z_all.shape[-1]))
        return path_z, ids, mask


def mlp(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.SiLU(), nn.Linear(d_out, d_out))


class SignalEmbedding(nn.Module):
    """Condition -> (B, emb_dim) vector added to the time embedding, or None for ``none``."""

    def __init__(self, kind: str, emb_dim: int, n_leaves: int = 0, n_nodes: int = 0, z_dim: int = 0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown conditioning {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        if kind == "leaf":
            if n_leaves < 1:
                raise ValueError("leaf conditioning needs the number of leaves")
            self.leaf = nn.Embedding(n_leaves, emb_dim)
        elif kind == "path":
            if n_nodes < 1 or z_dim < 1:
                raise ValueError("path conditioning needs the number of nodes and the latent size")
            self.latent = mlp(z_dim, emb_dim)
            self.node = nn.Embedding(n_nodes, emb_dim)

    def forward(self, cond: Condition) -> torch.Tensor | None:
        if self.kind == "none":
            return None
        keep = cond.keep.view(-1, 1)
        if self.kind == "leaf":
            if cond.leaf is None:
                raise ValueError("leaf conditioning needs Condition.leaf")
            return self.leaf(cond.leaf) * keep
        if cond.path_z is None:
            raise ValueError("path conditioning needs Condition.path_z / path_ids / path_mask")
        per_node = self.latent(cond.path_z) + self.node(cond.path_ids)          # (B, P, E)
        return (per_node * cond.path_mask[..., None]).sum(1) * keep


class ConditionalUNet(nn.Module):
    """The trained module: UNet + signal embedding. ``forward(x_t, t, cond)`` -> ε̂."""

    def __init__(self, unet: nn.Module, signal: SignalEmbedding):
        super().__init__()
        self.unet, self.signal = unet, signal

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.unet(x_t, t, cond.recon_input(), self.signal(cond))

    @classmethod
    def build(cls, unet_spec: UNetSpec | dict, signal: dict) -> "ConditionalUNet":
        """The module from plain data (a checkpoint's ``unet_spec`` and ``signal``), so that a
        checkpoint rebuilds the architecture it holds before loading its weights."""
        if isinstance(unet_spec, dict):
            unet_spec = UNetSpec(**{**unet_spec, "image_shape": tuple(unet_spec["image_shape"])})
        return cls(UNet(unet_spec), SignalEmbedding(signal["kind"], unet_spec.emb_dim, signal["n_leaves"],
                                                    signal["n_nodes"], signal["z_dim"]))


def signal_spec(kind: str, conditioner) -> dict:
    """The signal part of `ConditionalUNet.build`'s plain data, for ``conditioner``'s tree."""
    return {"kind": kind, "n_leaves": conditioner.n_leaves, "n_nodes": conditioner.paths.n_nodes,
            "z_dim": conditioner.z_dim}


def guided_eps(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, weight: float) -> torch.Tensor:
    """Classifier-free guidance: (1+w)·ε(cond) − w·ε(uncond); w = 0 is the conditional model.

    Both halves run as one batch."""
    if weight == 0:
        return model(x_t, t, cond)
    both = Condition.cat([cond, cond.dropped()])
    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
    return (1 + weight) * eps_c - weight * eps_u
