"""The frozen TreeVAE as a source of conditions (algorithm.md §5.1, §5.6).

A pass of the VAE (posterior for real images, prior for samples) gives every leaf's image, the
leaf probabilities and every node's latent. From those, `condition` builds the batch for one
chosen leaf per sample and `all_leaves` the batch of every (sample, leaf) pair, laid out
sample-major (row b·L + l) so a sampler can share noise within each sample's L rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from structgen.diffusion.conditioning import Condition, PathTable
from structgen.models.treevae import TreeVAE


@dataclass
class LeafParts:
    images: torch.Tensor          # (B, L, C, H, W) every leaf's VAE image in [0, 1]
    probs: torch.Tensor           # (B, L) leaf probabilities (posterior or prior)
    z_all: torch.Tensor | None    # (B, n_nodes, z_dim) latents in BFS order (path conditioning only)


def to_signed(x01: torch.Tensor) -> torch.Tensor:
    return x01 * 2.0 - 1.0


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def choose_leaf(probs: torch.Tensor, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) leaf per row: the most probable (``max``) or one drawn ∝ probs (``sample``), batched."""
    if how == "max":
        return probs.argmax(1)
    if how == "sample":
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    raise ValueError(f"unknown leaf choice {how!r}: expected max or sample")


class VAEConditioner:
    def __init__(self, vae: TreeVAE, kind: str):
        self.vae = vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        self.kind = kind
        self.tree = vae.tree
        self.leaves = vae.tree.leaves()
        self.n_leaves = len(self.leaves)
        self.paths = PathTable(vae.tree)
        s = vae.spec
        self.z_dim = s.latent_channels * s.representation_dim ** 2
        self.image_shape: tuple[int, int, int] = tuple(s.image_shape)

    def _z_all(self, z: dict) -> torch.Tensor | None:
        return torch.stack([z[p].flatten(1) for p in self.tree.bfs()], dim=1) if self.kind == "path" else None

    @torch.no_grad()
    def posterior(self, x01: torch.Tensor) -> LeafParts:
        """Reconstructions of real images x01 in [0, 1] (posterior samples: stochastic)."""
        out = self.vae(x01)
        return LeafParts(self.vae.images(out).clamp(0.0, 1.0), out.leaf_probs, self._z_all(out.z))

    @torch.no_grad()
    def prior(self, n: int, generator: torch.Generator | None = None) -> LeafParts:
        """n root samples decoded at every leaf, with the prior leaf probabilities."""
        images, probs, z = self.vae.generate(n, generator=generator)
        return LeafParts(images.clamp(0.0, 1.0), probs, self._z_all(z))

    def condition(self, parts: LeafParts, leaf: torch.Tensor) -> Condition:
        """One row per sample, conditioned on its leaf ``leaf`` (B,)."""
        rows = torch.arange(len(leaf), device=leaf.device)
        return self._condition(parts.images[rows, leaf], leaf, parts.z_all)

    def _condition(self, images: torch.Tensor, leaf: torch.Tensor, z_all: torch.Tensor | None) -> Condition:
        cond = Condition(recon=to_signed(images), keep=images.new_ones(len(leaf)))
        if self.kind == "leaf":
            cond.leaf = leaf
        elif self.kind == "path":
            cond.path_z, cond.path_ids, cond.path_mask = self.paths.gather(z_all, leaf)
        return cond

    @torch.no_grad()
    def posterior_condition(self, x01: torch.Tensor, how: str = "sample") -> Condition:
        """What DDPM training conditions on: a posterior sample of real images x01, one leaf per
        row chosen by ``how`` (`choose_leaf`). The same as ``condition(posterior(x01), leaf)``
        with the same RNG state, but only the chosen leaf's decoder runs for each row."""
        z, probs = self.vae.posterior_latents(x01)
        leaf = choose_leaf(probs, how)
        images = self.vae.decode_chosen(leaf, z).clamp(0.0, 1.0)
        return self._condition(images, leaf, self._z_all(z))

    def all_leaves(self, parts: LeafParts) -> Condition:
        """B·L rows: sample b with leaf l at row b·L + l."""
        b, n_leaves = parts.probs.shape
        leaf = torch.arange(n_leaves, device=parts.probs.device).repeat(b)
        sample = torch.arange(b, device=parts.probs.device).repeat_interleave(n_leaves)
        expanded = LeafParts(parts.images[sample], parts.probs[sample],
                             None if parts.z_all is None else parts.z_all[sample])
        return self.condition(expanded, leaf)


def vae_state(vae: TreeVAE, source: str) -> dict:
    """The VAE as it goes into every DDPM checkpoint: later changes to its run cannot skew the
    conditions a DDPM was trained on."""
    return {"source": source, **vae.to_state()}


def vae_from_state(state: dict, device="cpu") -> TreeVAE:
    return TreeVAE.from_state(state).to(device).eval()
