"""Loss terms of the tree ELBO (algorithm.md §2), for the full tree and for a sub-tree.

Every term is a batch mean of per-sample sums. The reference's KL clamps are parameters here
(`Clamps`), defaulting to its values; `Clamps.none()` gives the true ELBO for evaluation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from structgen.models.likelihood import leaf_nll
from structgen.models.treevae import SubTree, TreeOutput, TreeVAE
from structgen.tree.topology import ROOT


@dataclass(frozen=True)
class Clamps:
    sample: tuple[float, float] = (-1.0, 1000.0)   # per sample, per node: clamp(π·KL)
    batch: tuple[float, float] = (-10.0, 1e10)     # batch mean of the summed non-root KLs

    @classmethod
    def none(cls) -> "Clamps":
        return cls((-math.inf, math.inf), (-math.inf, math.inf))

    @classmethod
    def from_config(cls, training_cfg) -> "Clamps":
        return cls(tuple(training_cfg.kl_clamp_sample), tuple(training_cfg.kl_clamp_batch))


def tree_terms(model: TreeVAE, out: TreeOutput, x: torch.Tensor, clamps: Clamps) -> dict[str, torch.Tensor]:
    """rec, kl_root, kl_nodes, kl_decisions (scalars) for one full-tree pass."""
    rec = (out.leaf_probs * model.leaf_nll(out, x)).sum(1).mean()
    kl_root = out.node_kl[ROOT].clamp(*clamps.sample).mean()
    non_root = [(out.reach[p] * kl).clamp(*clamps.sample) for p, kl in out.node_kl.items() if p != ROOT]
    kl_nodes = (torch.stack(non_root, 1).sum(1).mean().clamp(*clamps.batch) if non_root else x.new_zeros(()))
    decisions = [out.reach[p] * kl for p, kl in out.decision_kl.items()]
    kl_decisions = torch.stack(decisions, 1).sum(1).mean() if decisions else x.new_zeros(())
    return {"rec": rec, "kl_root": kl_root, "kl_nodes": kl_nodes, "kl_decisions": kl_decisions}


def subtree_terms(subtree: SubTree, out: dict, x: torch.Tensor, likelihood: str, clamps: Clamps) -> dict:
    """The sub-tree's rec, kl_nodes, kl_decisions; kl_root is 0 by definition (§2)."""
    probs = out["leaf_probs"]
    rec = (probs * leaf_nll(out["decoder_out"], x, likelihood)).sum(1).mean()
    # The reference applies no per-sample clamp here (§8.9); we apply the same clamps as the
    # full tree so one setting governs both phases.
    kl_nodes = (probs * out["node_kl"]).clamp(*clamps.sample).sum(1).mean().clamp(*clamps.batch)
    kl_decisions = (out["reach"] * out["decision_kl"]).mean()
    return {"rec": rec, "kl_root": x.new_zeros(()), "kl_nodes": kl_nodes, "kl_decisions": kl_decisions}


def total_loss(terms: dict[str, torch.Tensor], alpha: float, aug: torch.Tensor | None = None) -> torch.Tensor:
    """loss = rec + α·(KL_root + KL_nodes + KL_decisions) + aug."""
    loss = terms["rec"] + alpha * (terms["kl_root"] + terms["kl_nodes"] + terms["kl_decisions"])
    return loss + aug if aug is not None else loss


def per_sample_nelbo(model: TreeVAE, out: TreeOutput, x: torch.Tensor) -> torch.Tensor:
    """Unclamped negative ELBO per sample (B,), α = 1."""
    total = (out.leaf_probs * model.leaf_nll(out, x)).sum(1) + out.node_kl[ROOT]
    for path, kl in out.node_kl.items():
        if path != ROOT:
            total = total + out.reach[path] * kl
    for path, kl in out.decision_kl.items():
        total = total + out.reach[path] * kl
    return total


def log_importance_weights(model: TreeVAE, out: TreeOutput, x: torch.Tensor) -> torch.Tensor:
    """log Σ_l p(x, z_path(l), l) / q(z_path(l) | x) for one posterior draw of every node's z.

    Summing over leaves marginalises the discrete choice exactly (a Rao-Blackwellised
    importance weight): for every leaf l, E_q[p(x, z_l, l) / q(z_l|x)] = p(x, l), so the sum
    over leaves is an unbiased estimate of p(x) and logsumexp over K draws gives a proper
    importance-weighted bound, unlike the reference's averaged analytic ELBOs (§8.12).
    """
    log_lik = -model.leaf_nll(out, x)                                  # (B, L)
    columns = []
    for i, leaf in enumerate(out.leaves):
        lw = log_lik[:, i]
        for node in model.tree.path_to_root(leaf):
            lw = lw + out.log_ratio[node]
            parent = node[:-1]
            if parent and model.tree.kind(parent) == "internal":
                logit_p = out.log_prior_decision[parent]
                lw = lw + torch.nn.functional.logsigmoid(logit_p if node[-1] == "0" else -logit_p)
        columns.append(lw)
    return torch.logsumexp(torch.stack(columns, 1), dim=1)
