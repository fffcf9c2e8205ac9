"""The heads of one depth run together (structgen.nn.depth_batched) and compute what calling
each node's modules on its own computes.

Same outputs, gradients, BatchNorm running statistics and spectral-norm power iterations as
the per-node calls; the per-node calls wherever the batched form does not apply; the whole
tree's forward as before; and the same tree after a short growth.
"""
import copy

import pytest
import torch
from conftest import SHORT_GROWTH, assert_same_growth

from structgen.models import gaussian as G
from structgen.models import treevae
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE
from structgen.nn import depth_batched
from structgen.nn.dense_conv import native_convolutions
from structgen.nn.heads import Dense, Router, Transformation
from structgen.nn.spectral import add_spectral_norm
from structgen.runtime.global_batchnorm import use_global_batchnorm


def per_node_denses(denses, d):
    return tuple(torch.stack(column) for column in zip(*[dense(d) for dense in denses]))


def per_node_transformations(transforms, parents):
    return tuple(torch.stack(column) for column in zip(*[t(z) for t, z in zip(transforms, parents)]))


def per_node_routers(routers, inputs, shared):
    each = [inputs] * len(routers) if shared else inputs
    return torch.stack([router(x) for router, x in zip(routers, each)])


def close(a, b, rtol=1e-4):
    scale = b.abs().max().clamp_min(1e-12)
    return bool((a - b).abs().max() / scale < rtol)


def flat(tensors):
    return torch.cat([t.flatten() for t in (tensors if isinstance(tensors, tuple) else (tensors,))])


def assert_same_modules(modules, twins):
    """Gradients (on one scale for all) and every buffer: running statistics, batch counts and
    spectral norm's power-iteration vectors."""
    grads = torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])
    assert close(grads, torch.cat([p.grad.flatten() for m in twins for p in m.parameters()]))
    for module, twin in zip(modules, twins):
        for (name, b), c in zip(module.named_buffers(), twin.buffers()):
            assert torch.allclose(b.double(), c.double(), rtol=1e-4, atol=1e-6), name


def run_both(batched, plain, modules, inputs, *args):
    """Outputs of the batched call on ``modules`` and of the per-node call on a copy; both
    backpropagated through the same loss."""
    twins = copy.deepcopy(modules)
    twin_inputs = inputs.detach().clone().requires_grad_(inputs.requires_grad)
    outs, twin_outs = batched(modules, inputs, *args), plain(twins, twin_inputs, *args)
    weights = torch.randn_like(flat(outs))
    (flat(outs) * weights).sum().backward()
    (flat(twin_outs) * weights).sum().backward()
    return outs, twin_outs, twins, twin_inputs


@pytest.mark.parametrize("spectral", [False, True])
def test_denses_of_one_depth_match_per_node(spectral):
    torch.manual_seed(0)
    denses = [Dense(32, 16) for _ in range(5)]
    denses = [add_spectral_norm(d) for d in denses] if spectral else denses
    d = torch.randn(20, 32, 2, 2, requires_grad=True)
    (mu, var), (twin_mu, twin_var), twins, twin_d = run_both(depth_batched.dense_outputs, per_node_denses, denses, d)
    assert mu.shape == var.shape == (5, 20, 16, 2, 2)
    assert close(mu, twin_mu) and close(var, twin_var) and bool((var > 0).all())
    assert close(d.grad, twin_d.grad)
    assert_same_modules(denses, twins)


@pytest.mark.parametrize("training", [True, False])
def test_transformations_of_one_depth_match_per_node(training):
    torch.manual_seed(0)
    transforms = [Transformation(16, 32, "swish", False).train(training) for _ in range(4)]
    for t in transforms:                        # running statistics that differ per node
        for bn in t.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
    parents = torch.randn(4, 24, 16, 2, 2, requires_grad=True)
    (mu, var), (twin_mu, twin_var), twins, twin_parents = run_both(
        depth_batched.transformation_outputs, per_node_transformations, transforms, parents)
    assert mu.shape == var.shape == (4, 24, 16, 2, 2)
    assert close(mu, twin_mu) and close(var, twin_var)
    assert close(parents.grad, twin_parents.grad)
    assert_same_modules(transforms, twins)


@pytest.mark.parametrize("shared", [True, False])
def test_routers_of_one_depth_match_per_node(shared):
    torch.manual_seed(0)
    routers = [Router(16, 2, 32, "swish", 0.0) for _ in range(3)]
    inputs = torch.randn(16, 16, 2, 2) if shared else torch.randn(3, 16, 16, 2, 2)
    inputs.requires_grad_()
    logits, twin_logits, twins, twin_inputs = run_both(depth_batched.router_logits, per_node_routers, routers, inputs,
                                                       shared)
    assert logits.shape == (3, 16)
    assert close(logits, twin_logits) and close(inputs.grad, twin_inputs.grad)
    assert_same_modules(routers, twins)


def test_batched_forms_are_the_ones_that_ran(monkeypatch):
    """The comparisons above must compare the batched code, not a fallback."""
    calls = []
    real = depth_batched.stacked_small_conv
    monkeypatch.setattr(depth_batched, "stacked_small_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    depth_batched.transformation_outputs([Transformation(16, 32, "swish", False) for _ in range(2)],
                                         torch.randn(2, 4, 16, 2, 2))
    assert len(calls) == 4                      # three body convs and the heads
    depth_batched.router_logits([Router(16, 2, 32, "swish", 0.0) for _ in range(2)], torch.randn(2, 4, 16, 2, 2),
                                shared=False)
    assert len(calls) == 5


def test_where_batching_does_not_apply_each_node_runs_alone(monkeypatch):
    """Router dropout (random draws per node), a cumulative BatchNorm average (momentum None:
    the average differs with each node's age), global-batch BatchNorm statistics and torch's own
    convolutions run node by node, with the per-node results."""
    monkeypatch.setattr(depth_batched, "stacked_small_conv", lambda *a, **k: pytest.fail("batched"))
    monkeypatch.setattr(depth_batched, "_stacked_batch_norm", lambda *a, **k: pytest.fail("batched"))
    torch.manual_seed(0)
    x = torch.randn(8, 16, 2, 2)
    dropping = [Router(16, 2, 32, "swish", 0.5) for _ in range(2)]
    torch.manual_seed(1)
    logits = depth_batched.router_logits(dropping, x, shared=True)
    torch.manual_seed(1)
    assert torch.equal(logits, per_node_routers(dropping, x, True))

    transforms = [Transformation(16, 32, "swish", False) for _ in range(2)]
    transforms[1].block.body[1].momentum = None
    parents = torch.stack([x, x])
    outs = depth_batched.transformation_outputs(transforms, parents)
    assert torch.equal(flat(outs), flat(per_node_transformations(copy.deepcopy(transforms), parents)))
    transforms[1].block.body[1].momentum = 0.1
    # Under multi-worker training a BatchNorm's statistics come from every worker's shard, which
    # only its own (replaced) forward computes (the multi-worker tests check the real thing).
    use_global_batchnorm(transforms[0])
    assert torch.equal(flat(depth_batched.transformation_outputs(transforms, parents)),
                       flat(per_node_transformations(copy.deepcopy(transforms), parents)))
    transforms = [Transformation(16, 32, "swish", False) for _ in range(2)]
    with native_convolutions():
        assert depth_batched.transformation_outputs(transforms, parents)[0].shape == (2, 8, 16, 2, 2)


def grown(n_leaves: int, spectral_norm: str) -> TreeVAE:
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm=spectral_norm))
    while len(model.tree.leaves()) < n_leaves:
        leaf = min(model.tree.leaves(), key=len)
        model.attach(leaf, SubTree(model, leaf))
    return model


def per_node_forward(model, x):
    """The tree's inference as the algorithm states it, one node at a time in BFS order."""
    feats = model.bottom_up(x)
    terms = {name: {} for name in ("z", "node_kl", "log_ratio", "decision_kl", "logit_q")}
    reach = {"r": x.new_ones(x.shape[0])}
    for path in model.tree.bfs():
        d = feats[model.level(len(path) - 1)]
        mu, var = model.dense[path](d)
        if path == "r":
            prior_mu, prior_var = torch.zeros_like(mu), torch.ones_like(var) - G.EPS
            terms["node_kl"][path] = G.kl_standard_normal(mu, var)
        else:
            prior_mu, prior_var = model.transform[path](terms["z"][path[:-1]])
            mu, var = G.precision_weighted(mu, var, prior_mu, prior_var)
            terms["node_kl"][path] = G.kl_normal(mu, var, prior_mu, prior_var)
        z = terms["z"][path] = G.sample(mu, var)
        terms["log_ratio"][path] = G.log_normal(z, prior_mu, prior_var) - G.log_normal(z, mu, var)
        if model.tree.kind(path) == "internal":
            logit_q, logit_p = model.router_q[path](d), model.router[path](z)
            terms["decision_kl"][path], terms["logit_q"][path] = G.kl_bernoulli_logits(logit_q, logit_p), logit_q
            reach[path + "0"] = reach[path] * torch.sigmoid(logit_q)
            reach[path + "1"] = reach[path] * (1 - torch.sigmoid(logit_q))
        elif model.tree.kind(path) == "passthrough":
            reach[path + "0" if path + "0" in model.tree else path + "1"] = reach[path]
    leaves = model.tree.leaves()
    images = torch.stack([model.decoder[p](terms["z"][p]) for p in leaves], dim=1)
    return terms, reach, images


@pytest.mark.parametrize("spectral_norm", ["none", "reference"])
def test_tree_forward_matches_the_per_node_forward(spectral_norm):
    """A 10-leaf tree (depths of 1, 2, 4, 8 and 4 nodes) with one leaf pruned (a pass-through
    node): every ELBO term, reach and image of the per-node procedure, from the same random
    draws, and the same gradients and running statistics."""
    torch.manual_seed(0)
    model = grown(10, spectral_norm)
    model.prune(model.tree.leaves()[-1])
    assert any(model.tree.kind(p) == "passthrough" for p in model.tree.bfs())
    twin = copy.deepcopy(model)
    x = torch.rand(32, 1, 28, 28)
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    terms, reach, images = per_node_forward(twin, x)
    for name, theirs in list(terms.items()) + [("reach", reach)]:
        ours = getattr(out, name)
        assert ours.keys() == theirs.keys(), name
        assert all(close(ours[k], theirs[k]) for k in ours), name
    assert close(out.decoder_out, images)
    (out.decoder_out.sum() + sum(out.node_kl.values()).sum() + sum(out.decision_kl.values()).sum()).backward()
    (images.sum() + sum(terms["node_kl"].values()).sum() + sum(terms["decision_kl"].values()).sum()).backward()
    assert_same_modules([model], [twin])


def test_growth_gives_the_same_tree_with_batched_and_per_node_heads(tmp_path, monkeypatch):
    """A short growth, once as shipped and once with every head called node by node."""
    from structgen.api import train_tree
    from structgen.config import load_config

    keys = SHORT_GROWTH + [f"run.runs_dir={tmp_path}"]
    batched_dir, _ = train_tree(load_config(None, keys + ["run.name=batched"]), evaluate=False)
    monkeypatch.setattr(treevae, "dense_outputs", per_node_denses)
    monkeypatch.setattr(treevae, "transformation_outputs", per_node_transformations)
    monkeypatch.setattr(treevae, "router_logits", per_node_routers)
    plain_dir, _ = train_tree(load_config(None, keys + ["run.name=plain"]), evaluate=False)
    assert_same_growth(batched_dir, plain_dir, first_epoch_rel=1e-4)
