"""Training objectives as modules, so a DDP wrapper sees exactly the parameters that train.

`FullTreeObjective` trains the whole TreeVAE. `SubTreeObjective` trains a `SubTree` below one
leaf; the frozen tree is held outside the module registry (DDP must neither sync nor expect
gradients for it) and is run only along the root-to-leaf path.
"""
from __future__ import annotations

import torch
from torch import nn

from structgen.models.elbo import Clamps, subtree_terms, tree_terms
from structgen.models.treevae import SubTree, TreeVAE
from structgen.nn.contrastive import info_nce

DECISION_TEMPERATURE = 1.0   # §2: exp(cosine), no temperature
INSTANCE_TEMPERATURE = 0.5   # §2: NT-Xent on bottom-up projections
# Not a loss term: each leaf's batch-mean path probability (a sub-tree: its two children's), so a
# phase can log where the mass goes epoch by epoch and a dying branch shows before the prune.
LEAF_MASS = "leaf_mass"


class Contrastive:
    """The CIFAR contrastive extension; batches are [first views ; second views] (§2)."""

    def __init__(self, weight: float, method: str):
        self.weight = weight
        self.on_decisions = "InfoNCE" in method
        self.on_instances = "instancewise_full" in method

    @staticmethod
    def decision_loss(logit_q: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
        q = torch.sigmoid(logit_q)
        v = torch.stack([q, 1 - q], dim=1)
        n = v.shape[0] // 2
        return info_nce(v[:n], v[n:], DECISION_TEMPERATURE, weights=reach)

    def instance_loss(self, model: TreeVAE, feats: list[torch.Tensor]) -> torch.Tensor:
        losses = []
        for proj, d in zip(model.projections, feats):
            e = proj(d)
            n = e.shape[0] // 2
            losses.append(info_nce(e[:n], e[n:], INSTANCE_TEMPERATURE))
        return torch.stack(losses).mean()


class FullTreeObjective(nn.Module):
    def __init__(self, model: TreeVAE, clamps: Clamps, contrastive: Contrastive | None = None):
        super().__init__()
        self.model = model
        self.clamps = clamps
        self.contrastive = contrastive

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x)
        terms = tree_terms(self.model, out, x, self.clamps)
        terms[LEAF_MASS] = out.leaf_probs.detach().mean(0)
        c = self.contrastive
        if c is not None and self.training:
            aug = x.new_zeros(())
            if c.on_decisions:
                for path, logit_q in out.logit_q.items():
                    aug = aug + c.decision_loss(logit_q, out.reach[path])
            if c.on_instances and self.model.projections is not None:
                aug = aug + c.instance_loss(self.model, out.features)
            terms["aug"] = c.weight * aug
        return terms


class SubTreeObjective(nn.Module):
    def __init__(self, model: TreeVAE, subtree: SubTree, clamps: Clamps, contrastive: Contrastive | None = None):
        super().__init__()
        self.subtree = subtree
        object.__setattr__(self, "frozen", model)   # not a submodule: not trained, not synced
        self.clamps = clamps
        self.contrastive = contrastive

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            feats, z_leaf, reach = self.frozen.route_to(x, self.subtree.leaf)
        out = self.subtree(feats, z_leaf, reach)
        terms = subtree_terms(self.subtree, out, x, self.frozen.spec.likelihood, self.clamps)
        terms[LEAF_MASS] = out["leaf_probs"].detach().mean(0)
        c = self.contrastive
        if c is not None and self.training and c.on_decisions:
            terms["aug"] = c.weight * c.decision_loss(out["logit_q"], reach)
        return terms
