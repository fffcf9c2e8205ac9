"""The CNN-TreeVAE process object: inference, generation, routing, attach and prune.

No loops over samples, no files, no optimisers: loops live in `structgen.train`. Modules are
kept in `ModuleDict`s keyed by node path (see `structgen.tree.topology`) and re-ordered in BFS
order after every topology change, so `parameters()` has the same order for the same tree and
a checkpoint's optimiser state maps back onto the right tensors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from structgen.config.schema import spectral_norm_placement
from structgen.models import gaussian as G
from structgen.models.likelihood import leaf_nll, to_image
from structgen.nn.contrastive import Projection
from structgen.nn.decoders import build_decoder
from structgen.nn.depth_batched import dense_outputs, router_logits, transformation_outputs
from structgen.nn.encoders import BottomUp
from structgen.nn.heads import Dense, Router, Transformation
from structgen.nn.leaf_decoding import decode_leaves
from structgen.nn.spectral import add_spectral_norm, apply_to_bottom_up, normalises
from structgen.tree.topology import ROOT, Tree

MODULE_KINDS = ("dense", "transform", "router", "router_q", "decoder")


@dataclass
class ModelSpec:
    """What it takes to rebuild the network of a TreeVAE (stored in checkpoints)."""
    image_shape: tuple[int, int, int]
    encoder: str = "cnn1"
    representation_dim: int = 2
    latent_channels: int = 16
    bottom_up_channels: int = 32
    levels: int = 7
    act_function: str = "swish"
    likelihood: str = "sigmoid"
    res_connections: bool = False
    spectral_norm: str = "none"     # placement (structgen.nn.spectral); checkpoints before it hold a bool
    dim_mod_conv: bool = False
    dropout_router: float = 0.0
    contrastive: bool = False       # CIFAR extension: NT-Xent projections of every bottom-up level

    @classmethod
    def from_config(cls, model_cfg, image_shape, contrastive: bool = False) -> "ModelSpec":
        """The spec of the config's model section: its keys of the same name, and `activation`
        as the likelihood."""
        same = {f.name: getattr(model_cfg, f.name) for f in fields(cls) if hasattr(model_cfg, f.name)}
        return cls(**same, image_shape=tuple(image_shape), likelihood=model_cfg.activation, contrastive=contrastive)

    def __post_init__(self):
        # The one place an old bool becomes its placement: every loader of a checkpoint's spec
        # and the config go through here, so old runs rebuild with the keys they were saved with.
        self.spectral_norm = spectral_norm_placement(self.spectral_norm)


@dataclass
class TreeOutput:
    """Everything one inference pass computes; tensors are batched over the first dim."""
    leaves: list[str]
    leaf_probs: torch.Tensor                       # (B, n_leaves), rows sum to 1
    decoder_out: torch.Tensor                      # (B, n_leaves, C, H, W), pre-activation
    z: dict[str, torch.Tensor] = field(default_factory=dict)          # posterior samples
    reach: dict[str, torch.Tensor] = field(default_factory=dict)      # (B,) reach probability
    node_kl: dict[str, torch.Tensor] = field(default_factory=dict)    # (B,) unweighted KL(q||p)
    decision_kl: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) Bernoulli KL
    log_ratio: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) log p(z) - log q(z)
    log_prior_decision: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) logit p(left|z)
    logit_q: dict[str, torch.Tensor] = field(default_factory=dict)   # (B,) logit q(left|x)
    features: list[torch.Tensor] = field(default_factory=list)       # bottom-up levels d^(0..L-1)


def _depth(path: str) -> int:
    return len(path) - 1


class TreeVAE(nn.Module):
    def __init__(self, spec: ModelSpec, tree: Tree | None = None):
        super().__init__()
        self.spec = spec
        channels, side, _ = spec.image_shape
        self.bottom_up = apply_to_bottom_up(spec.spectral_norm, BottomUp(
            spec.encoder, channels, side, [spec.bottom_up_channels] * spec.levels, spec.representation_dim,
            spec.act_function, spec.res_connections, spec.dim_mod_conv))
        self.projections = nn.ModuleList(
            [Projection(spec.bottom_up_channels, spec.representation_dim, spec.act_function)
             for _ in range(spec.levels)]) if spec.contrastive else None
        for kind in MODULE_KINDS:
            setattr(self, kind, nn.ModuleDict())
        self.tree = tree if tree is not None else Tree.complete(1)
        if self.tree.max_depth() > self.max_depth:
            raise ValueError(f"tree depth {self.tree.max_depth()} exceeds the bottom-up chain's {self.max_depth}")
        for path in self.tree.bfs():
            self._build_node(path, self.tree.kind(path))
        self._reorder()

    # ---- state -----------------------------------------------------------------------------
    def to_state(self) -> dict:
        """What rebuilds this model anywhere: spec, topology and weights (on CPU), plain data
        that checkpoints (TreeVAE and DDPM alike) store as they are."""
        return {"spec": asdict(self.spec), "tree": self.tree.to_dict(),
                "model": {k: v.cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict) -> "TreeVAE":
        """The model of ``to_state()`` (or of any checkpoint carrying its keys): topology first,
        then the weights, strictly, so a missing or extra key is an error, never a random layer."""
        spec = ModelSpec(**{**state["spec"], "image_shape": tuple(state["spec"]["image_shape"])})
        model = cls(spec, Tree.from_dict(state["tree"]))
        model.load_state_dict(state["model"], strict=True)
        return model

    # ---- structure -----------------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        return self.spec.levels - 1

    def level(self, depth: int) -> int:
        """Bottom-up level feeding a node at ``depth``: the root reads the deepest one."""
        return self.spec.levels - 1 - depth

    def new_dense(self, depth: int) -> nn.Module:
        """The dense of a node at ``depth``: the `reference` placement normalises grown depths."""
        dense = Dense(self.spec.bottom_up_channels, self.spec.latent_channels)
        return add_spectral_norm(dense) if normalises(self.spec.spectral_norm, "dense", depth) else dense

    def new_transform(self) -> nn.Module:
        s = self.spec
        return Transformation(s.latent_channels, s.bottom_up_channels, s.act_function, s.res_connections)

    def new_router(self, on_latent: bool) -> nn.Module:
        s = self.spec
        in_ch = s.latent_channels if on_latent else s.bottom_up_channels
        return Router(in_ch, s.representation_dim, s.bottom_up_channels, s.act_function, s.dropout_router)

    def new_decoder(self) -> nn.Module:
        s = self.spec
        channels, side, _ = s.image_shape
        return build_decoder(s.encoder, s.latent_channels, channels, side, s.representation_dim,
                             s.act_function, s.dim_mod_conv, normalises(s.spectral_norm, "decoder"))

    def _build_node(self, path: str, kind: str) -> None:
        self.dense[path] = self.new_dense(_depth(path))
        if path != ROOT:
            self.transform[path] = self.new_transform()
        if kind == "internal":
            self.router[path] = self.new_router(on_latent=True)
            self.router_q[path] = self.new_router(on_latent=False)
        elif kind == "leaf":
            self.decoder[path] = self.new_decoder()

    def _reorder(self) -> None:
        order = {p: i for i, p in enumerate(self.tree.bfs())}
        for kind in MODULE_KINDS:
            container: nn.ModuleDict = getattr(self, kind)
            items = sorted(container.items(), key=lambda kv: order[kv[0]])
            setattr(self, kind, nn.ModuleDict(items))

    def attach(self, leaf: str, subtree: "SubTree") -> None:
        """Put a trained two-leaf sub-tree below ``leaf``; the leaf's own decoder is dropped."""
        self.tree = self.tree.attach(leaf)
        if _depth(leaf) + 1 > self.max_depth:
            raise ValueError(f"cannot split {leaf!r}: its children would exceed depth {self.max_depth}")
        del self.decoder[leaf]
        self.router[leaf], self.router_q[leaf] = subtree.router, subtree.router_q
        for child, index in ((leaf + "0", 0), (leaf + "1", 1)):
            self.transform[child] = subtree.transform[index]
            self.dense[child] = subtree.dense[index]
            self.decoder[child] = subtree.decoder[index]
        self._reorder()

    def prune(self, leaf: str) -> None:
        """Remove ``leaf`` (and ancestors left childless); its parent becomes pass-through."""
        before = set(self.tree.bfs())
        self.tree = self.tree.prune(leaf)
        for gone in before - set(self.tree.bfs()):
            for kind in MODULE_KINDS:
                container = getattr(self, kind)
                if gone in container:
                    del container[gone]
        for path in self.tree.bfs():
            if self.tree.kind(path) != "internal" and path in self.router:
                del self.router[path]
                del self.router_q[path]
        self._reorder()

    # ---- inference -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> TreeOutput:
        feats = self.bottom_up(x)
        batch = x.shape[0]
        out = TreeOutput(leaves=self.tree.leaves(), leaf_probs=x.new_empty(0), decoder_out=x.new_empty(0),
                         features=feats)
        out.reach[ROOT] = x.new_ones(batch)
        for depth, paths in self._by_depth():
            # The nodes of one depth run together: heads (structgen.nn.depth_batched) and ELBO
            # terms on (nodes, batch, ...) tensors.
            d = feats[self.level(depth)]
            mu_hat, var_hat = dense_outputs([self.dense[p] for p in paths], d)
            if depth == 0:
                mu, var = mu_hat, var_hat
                prior_mu, prior_var = torch.zeros_like(mu), torch.ones_like(var) - G.EPS
                node_kl = G.kl_standard_normal(mu, var, batch_dims=2)
            else:
                parents = torch.stack([out.z[p[:-1]] for p in paths])
                prior_mu, prior_var = transformation_outputs([self.transform[p] for p in paths], parents)
                mu, var = G.precision_weighted(mu_hat, var_hat, prior_mu, prior_var)
                node_kl = G.kl_normal(mu, var, prior_mu, prior_var, batch_dims=2)
            # Drawn node by node in BFS order, so the random draws come in the order they always did.
            z = torch.stack([G.sample(m, v) for m, v in zip(mu, var)])
            log_ratio = G.log_normal(z, prior_mu, prior_var, batch_dims=2) - G.log_normal(z, mu, var, batch_dims=2)
            for i, path in enumerate(paths):
                out.z[path], out.node_kl[path], out.log_ratio[path] = z[i], node_kl[i], log_ratio[i]
            internal = [p for p in paths if self.tree.kind(p) == "internal"]
            if internal:
                self._route(out, internal, router_logits([self.router_q[p] for p in internal], d, shared=True),
                            router_logits([self.router[p] for p in internal], torch.stack([out.z[p] for p in internal]),
                                          shared=False))
            for path in paths:
                if self.tree.kind(path) == "passthrough":
                    out.reach[self.tree.children(path)[0]] = out.reach[path]
        out.leaf_probs = torch.stack([out.reach[p] for p in out.leaves], dim=1)
        out.decoder_out = self.decode(out.leaves, [out.z[p] for p in out.leaves])
        return out

    def _by_depth(self) -> list[tuple[int, list[str]]]:
        """(depth, its nodes in BFS order), shallowest first."""
        groups: dict[int, list[str]] = {}
        for path in self.tree.bfs():
            groups.setdefault(_depth(path), []).append(path)
        return list(groups.items())

    @staticmethod
    def _route(out: TreeOutput, internal: list[str], logit_q: torch.Tensor, logit_p: torch.Tensor) -> None:
        """The decision terms of internal nodes of one depth and their children's reach into
        ``out``, from the routers' logits (nodes, batch)."""
        q_left = torch.sigmoid(logit_q)
        decision_kl = G.kl_bernoulli_logits(logit_q, logit_p)
        reach = torch.stack([out.reach[p] for p in internal])
        left, right = reach * q_left, reach * (1 - q_left)
        for i, path in enumerate(internal):
            out.decision_kl[path], out.logit_q[path] = decision_kl[i], logit_q[i]
            out.log_prior_decision[path] = logit_p[i]
            out.reach[path + "0"], out.reach[path + "1"] = left[i], right[i]

    @torch.no_grad()
    def posterior_latents(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(z of every node, leaf probabilities (B, n_leaves)): the posterior samples of `forward`,
        drawn in the same order from the same RNG, without its ELBO terms and decoders.

        A DDPM conditions on one leaf's image per sample; decoding every leaf for every sample
        to keep one was nearly half of the frozen TreeVAE's cost in a diffusion training step.
        """
        feats = self.bottom_up(x)
        z = {}
        for path in self.tree.bfs():
            mu, var = self.dense[path](feats[self.level(_depth(path))])
            if path != ROOT:
                mu, var = G.precision_weighted(mu, var, *self.transform[path](z[path[:-1]]))
            z[path] = G.sample(mu, var)
        reach = self.reach_from_features(feats)
        return z, torch.stack([reach[p] for p in self.tree.leaves()], dim=1)

    @torch.no_grad()
    def decode_chosen(self, leaf: torch.Tensor, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C, H, W) images: row b decoded by the decoder of leaf ``leaf[b]`` (an index into
        ``tree.leaves()``) alone, each leaf's rows in one call."""
        images = None
        for i, path in enumerate(self.tree.leaves()):
            rows = (leaf == i).nonzero().squeeze(1)
            if len(rows):
                out = self.decoder[path](z[path][rows])
                if images is None:
                    images = out.new_empty((len(leaf), *out.shape[1:]))
                images[rows] = out
        return to_image(images, self.spec.likelihood)

    def decode(self, leaves: list[str], latents: list[torch.Tensor]) -> torch.Tensor:
        """(B, len(leaves), C, H, W) pre-activation images of each leaf's decoder."""
        return decode_leaves([self.decoder[p] for p in leaves], latents)

    def reach_from_features(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Posterior reach probability of every node, from the q-routers alone.

        q(c|x) depends only on bottom-up features, so clustering, split selection and pruning
        need no latent sampling and no decoder at all.
        """
        batch = feats[0].shape[0]
        reach = {ROOT: feats[0].new_ones(batch)}
        for path in self.tree.bfs():
            kind = self.tree.kind(path)
            if kind == "internal":
                q_left = torch.sigmoid(self.router_q[path](feats[self.level(_depth(path))]))
                reach[path + "0"] = reach[path] * q_left
                reach[path + "1"] = reach[path] * (1 - q_left)
            elif kind == "passthrough":
                reach[self.tree.children(path)[0]] = reach[path]
        return reach

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Leaf probabilities (B, n_leaves) in BFS leaf order; argmax is the cluster."""
        reach = self.reach_from_features(self.bottom_up(x))
        return torch.stack([reach[p] for p in self.tree.leaves()], dim=1)

    def route_to(self, x: torch.Tensor, leaf: str):
        """Bottom-up features, the posterior sample at ``leaf`` and its reach probability.

        Walks only the root-to-leaf path: sub-tree training calls this on the frozen tree for
        every batch, and running the other nodes (or any decoder) would be wasted work.
        """
        feats = self.bottom_up(x)
        path_nodes = list(reversed(self.tree.path_to_root(leaf)))
        reach = x.new_ones(x.shape[0])
        z = None
        for path in path_nodes:
            d = feats[self.level(_depth(path))]
            mu, var = self.dense[path](d)
            if path != ROOT:
                prior_mu, prior_var = self.transform[path](z)
                mu, var = G.precision_weighted(mu, var, prior_mu, prior_var)
            z = G.sample(mu, var)
            if path != leaf and self.tree.kind(path) == "internal":
                q_left = torch.sigmoid(self.router_q[path](d))
                reach = reach * (q_left if leaf[len(path)] == "0" else 1 - q_left)
        return feats, z, reach

    # ---- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None):
        """Sample the prior. Returns (images (n, n_leaves, C, H, W), leaf probs (n, n_leaves), z)."""
        s = self.spec
        device = next(self.parameters()).device
        r = s.representation_dim
        z = {ROOT: torch.randn((n, s.latent_channels, r, r), generator=generator, device=device)}
        prob = {ROOT: torch.ones(n, device=device)}
        for path in self.tree.bfs():
            if path != ROOT:
                prior_mu, prior_var = self.transform[path](z[path[:-1]])
                z[path] = G.sample(prior_mu, prior_var, generator=generator)
            kind = self.tree.kind(path)
            if kind == "internal":
                p_left = torch.sigmoid(self.router[path](z[path]))
                prob[path + "0"], prob[path + "1"] = prob[path] * p_left, prob[path] * (1 - p_left)
            elif kind == "passthrough":
                prob[self.tree.children(path)[0]] = prob[path]
        leaves = self.tree.leaves()
        images = to_image(self.decode(leaves, [z[p] for p in leaves]), s.likelihood)
        return images, torch.stack([prob[p] for p in leaves], dim=1), z

    def images(self, out: TreeOutput) -> torch.Tensor:
        return to_image(out.decoder_out, self.spec.likelihood)

    def leaf_nll(self, out: TreeOutput, x: torch.Tensor) -> torch.Tensor:
        """(B, n_leaves) per-leaf negative log-likelihood of x."""
        return leaf_nll(out.decoder_out, x, self.spec.likelihood)


class SubTree(nn.Module):
    """A root with two leaves, trained below one leaf of a frozen tree (§3.2 step 6-7).

    Its router_q reads the bottom-up level of the split leaf; its children's denses read the
    level below. `TreeVAE.attach` moves these modules into the tree.
    """

    def __init__(self, model: TreeVAE, leaf: str):
        super().__init__()
        self.leaf = leaf
        self.depth = _depth(leaf)
        self.router = model.new_router(on_latent=True)
        self.router_q = model.new_router(on_latent=False)
        self.transform = nn.ModuleList([model.new_transform() for _ in range(2)])
        self.dense = nn.ModuleList([model.new_dense(self.depth + 1) for _ in range(2)])
        self.decoder = nn.ModuleList([model.new_decoder() for _ in range(2)])
        self.parent_level = model.level(self.depth)
        self.child_level = model.level(self.depth + 1)

    def forward(self, feats: list[torch.Tensor], z_parent: torch.Tensor, reach: torch.Tensor) -> dict:
        d_parent, d_child = feats[self.parent_level], feats[self.child_level]
        logit_q = self.router_q(d_parent)
        logit_p = self.router(z_parent)
        q_left = torch.sigmoid(logit_q)
        probs = torch.stack([reach * q_left, reach * (1 - q_left)], dim=1)
        kls, latents = [], []
        for i in range(2):
            prior_mu, prior_var = self.transform[i](z_parent)
            mu_hat, var_hat = self.dense[i](d_child)
            mu, var = G.precision_weighted(mu_hat, var_hat, prior_mu, prior_var)
            latents.append(G.sample(mu, var))
            kls.append(G.kl_normal(mu, var, prior_mu, prior_var))
        decoded = decode_leaves(list(self.decoder), latents)
        return {"leaf_probs": probs, "decoder_out": decoded, "node_kl": torch.stack(kls, dim=1),
                "decision_kl": G.kl_bernoulli_logits(logit_q, logit_p), "reach": reach, "logit_q": logit_q}
