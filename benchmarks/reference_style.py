"""A straightforward node-by-node TreeVAE step written the way the reference code does it,
sharing our modules so that only the *procedure* differs (algorithm.md §8, "Performance"):

* the bottom-up chain also evaluates its unused mu/var heads at every level;
* KLs go through torch.distributions objects; decisions use the ε formula on probabilities;
  BCE is computed on sigmoid outputs;
* routing (split selection) runs the full forward with every leaf decoder;
* a sub-tree step first runs the whole frozen tree, all decoders included, to get one leaf's
  sample and reach probability.

It exists only as the baseline of `tree_throughput.py`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from structgen.models import gaussian as G
from structgen.models.treevae import SubTree, TreeVAE
from structgen.tree.topology import ROOT

EPS = 1e-7


class DeadHeads(nn.Module):
    """The mu/var heads the reference computes at each bottom-up level and never reads."""

    def __init__(self, model: TreeVAE):
        super().__init__()
        s = model.spec
        self.heads = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(s.bottom_up_channels, s.latent_channels, 3, padding=1, bias=False)
                           for _ in range(2)]) for _ in range(s.levels - 1))

    def forward(self, feats):
        for (mu, var), d in zip(self.heads, feats[1:]):
            mu(d), F.softplus(var(d))


def reference_forward(model: TreeVAE, heads: DeadHeads, x: torch.Tensor):
    feats = model.bottom_up(x)
    heads(feats)
    z, reach, decoded = {}, {ROOT: x.new_ones(x.shape[0])}, {}
    kl_root, kl_nodes, kl_dec = 0, 0, 0
    for path in model.tree.bfs():
        d = feats[model.level(len(path) - 1)]
        mu_hat, var_hat = model.dense[path](d)
        if path == ROOT:
            mu, var = mu_hat, var_hat
            prior = Normal(torch.zeros_like(mu), torch.ones_like(var))
        else:
            pm, pv = model.transform[path](z[path[:-1]])
            mu, var = G.precision_weighted(mu_hat, var_hat, pm, pv)
            prior = Normal(pm, torch.sqrt(pv + EPS))
        post = Normal(mu, torch.sqrt(var + EPS))
        z[path] = post.rsample()
        kl = kl_divergence(post, prior).flatten(1).sum(1)
        if path == ROOT:
            kl_root = kl.clamp(-1, 1000).mean()
        else:
            kl_nodes = kl_nodes + (reach[path] * kl).clamp(-1, 1000)
        kind = model.tree.kind(path)
        if kind == "internal":
            q = torch.sigmoid(model.router_q[path](d))
            p = torch.sigmoid(model.router[path](z[path]))
            kl_dec = kl_dec + reach[path] * (q * torch.log(EPS + q / (p + EPS))
                                             + (1 - q) * torch.log(EPS + (1 - q) / (1 - p + EPS)))
            reach[path + "0"], reach[path + "1"] = reach[path] * q, reach[path] * (1 - q)
        elif kind == "passthrough":
            reach[model.tree.children(path)[0]] = reach[path]
        else:
            decoded[path] = torch.sigmoid(model.decoder[path](z[path]))
    rec = 0
    for leaf in model.tree.leaves():
        bce = F.binary_cross_entropy(decoded[leaf], x, reduction="none").flatten(1).sum(1)
        rec = rec + reach[leaf] * bce
    kl_nodes = kl_nodes.mean().clamp(-10, 1e10) if torch.is_tensor(kl_nodes) else kl_nodes
    return rec.mean() + kl_root + kl_nodes + kl_dec.mean(), reach, z


@torch.no_grad()
def reference_predict(model: TreeVAE, heads: DeadHeads, x: torch.Tensor) -> torch.Tensor:
    _, reach, _ = reference_forward(model, heads, x)
    return torch.stack([reach[p] for p in model.tree.leaves()], 1)


def reference_subtree_loss(model: TreeVAE, heads: DeadHeads, subtree: SubTree, x: torch.Tensor):
    with torch.no_grad():
        _, reach, z = reference_forward(model, heads, x)
        feats = model.bottom_up(x)
    out = subtree(feats, z[subtree.leaf], reach[subtree.leaf])
    bce = F.binary_cross_entropy(torch.sigmoid(out["decoder_out"]).flatten(0, 1),
                                 x.unsqueeze(1).expand(-1, 2, *x.shape[1:]).flatten(0, 1), reduction="none")
    return (out["leaf_probs"] * bce.flatten(1).sum(1).view(-1, 2)).sum(1).mean()
