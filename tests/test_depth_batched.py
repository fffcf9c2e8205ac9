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

from structgen.models import treevae
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE
from structgen.nn import depth_batched
from structgen.nn.dense_conv import native_convolutions
from structgen.nn.heads import Dense, Router, Transformation
from structgen.nn.spectral import add_spectral_norm


def per_node_denses(denses, d):
    return [dense(d) for dense in denses]


def per_node_transformations(transforms, parents):
    return [t(z) for t, z in zip(transforms, parents)]


def per_node_routers(routers, inputs):
    each = [inputs] * len(routers) if isinstance(inputs, torch.Tensor) else inputs
    return [router(x) for router, x in zip(routers, each)]


def close(a, b, rtol=1e-4):
    scale = b.abs().max().clamp_min(1e-12)
    return bool((a - b).abs().max() / scale < rtol)


def flat(pairs):
    return torch.cat([t.flatten() for pair in pairs for t in (pair if isinstance(pair, tuple) else (pair,))])


def assert_same_modules(modules, twins):
    """Gradients (on one scale for all) and every buffer: running statistics, batch counts and
    spectral norm's power-iteration vectors."""
    grads = torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])
    assert close(grads, torch.cat([p.grad.flatten() for m in twins for p in m.parameters()]))
    for module, twin in zip(modules, twins):
        for (name, b), c in zip(module.named_buffers(), twin.buffers()):
            assert torch.allclose(b.double(), c.double(), rtol=1e-4, atol=1e-6), name


def run_both(batched, plain, modules, inputs):
    """Outputs of the batched call on ``modules`` and of the per-node call on a copy; both
    backpropagated through the same loss."""
    twins = copy.deepcopy(modules)
    twin_inputs = [x.detach().clone().requires_grad_() for x in inputs] if isinstance(inputs, list) else inputs
    outs, twin_outs = batched(modules, inputs), plain(twins, twin_inputs)
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
    outs, twin_outs, twins, _ = run_both(depth_batched.dense_outputs, per_node_denses, denses, d)
    for (mu, var), (twin_mu, twin_var) in zip(outs, twin_outs):
        assert mu.shape == var.shape == (20, 16, 2, 2)
        assert close(mu, twin_mu) and close(var, twin_var) and bool((var > 0).all())
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
    parents = [torch.randn(24, 16, 2, 2, requires_grad=True) for _ in transforms]
    outs, twin_outs, twins, twin_parents = run_both(depth_batched.transformation_outputs, per_node_transformations,
                                                    transforms, parents)
    for (mu, var), (twin_mu, twin_var) in zip(outs, twin_outs):
        assert mu.shape == var.shape == (24, 16, 2, 2)
        assert close(mu, twin_mu) and close(var, twin_var)
    assert close(flat([p.grad for p in parents]), flat([p.grad for p in twin_parents]))
    assert_same_modules(transforms, twins)


@pytest.mark.parametrize("shared", [True, False])
def test_routers_of_one_depth_match_per_node(shared):
    torch.manual_seed(0)
    routers = [Router(16, 2, 32, "swish", 0.0) for _ in range(3)]
    inputs = torch.randn(16, 16, 2, 2) if shared else [torch.randn(16, 16, 2, 2, requires_grad=True) for _ in routers]
    outs, twin_outs, twins, _ = run_both(depth_batched.router_logits, per_node_routers, routers, inputs)
    assert all(logit.shape == (16,) for logit in outs)
    assert close(torch.stack(outs), torch.stack(twin_outs))
    assert_same_modules(routers, twins)


def test_batched_forms_are_the_ones_that_ran(monkeypatch):
    """The comparisons above must compare the batched code, not a fallback."""
    calls = []
    real = depth_batched.stacked_small_conv
    monkeypatch.setattr(depth_batched, "stacked_small_conv", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    depth_batched.transformation_outputs([Transformation(16, 32, "swish", False) for _ in range(2)],
                                         [torch.randn(4, 16, 2, 2)] * 2)
    assert len(calls) == 4                      # three body convs and the heads
    depth_batched.router_logits([Router(16, 2, 32, "swish", 0.0) for _ in range(2)], [torch.randn(4, 16, 2, 2)] * 2)
    assert len(calls) == 5


def test_where_batching_does_not_apply_each_node_runs_alone(monkeypatch):
    """Router dropout (random draws per node), a cumulative BatchNorm average (momentum None:
    the average differs with each node's age) and torch's own convolutions run node by node,
    with the per-node results."""
    monkeypatch.setattr(depth_batched, "stacked_small_conv", lambda *a, **k: pytest.fail("batched"))
    monkeypatch.setattr(depth_batched, "_stacked_batch_norm", lambda *a, **k: pytest.fail("batched"))
    torch.manual_seed(0)
    x = torch.randn(8, 16, 2, 2)
    dropping = [Router(16, 2, 32, "swish", 0.5) for _ in range(2)]
    torch.manual_seed(1)
    logits = depth_batched.router_logits(dropping, x)
    torch.manual_seed(1)
    assert torch.equal(torch.stack(logits), torch.stack(per_node_routers(dropping, x)))

    transforms = [Transformation(16, 32, "swish", False) for _ in range(2)]
    transforms[1].block.body[1].momentum = None
    outs = depth_batched.transformation_outputs(transforms, [x, x])
    assert torch.equal(flat(outs), flat(per_node_transformations(copy.deepcopy(transforms), [x, x])))
    transforms[1].block.body[1].momentum = 0.1
    with native_convolutions():
        assert len(depth_batched.transformation_outputs(transforms, [x, x])) == 2


def grown(n_leaves: int, spectral_norm: str) -> TreeVAE:
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm=spectral_norm))
    while len(model.tree.leaves()) < n_leaves:
        leaf = min(model.tree.leaves(), key=len)
        model.attach(leaf, SubTree(model, leaf))
    return model


def plain_heads(monkeypatch):
    monkeypatch.setattr(treevae, "dense_outputs", per_node_denses)
    monkeypatch.setattr(treevae, "transformation_outputs", per_node_transformations)
    monkeypatch.setattr(treevae, "router_logits", per_node_routers)


@pytest.mark.parametrize("spectral_norm", ["none", "reference"])
def test_tree_forward_matches_the_per_node_forward(monkeypatch, spectral_norm):
    """A 10-leaf tree (depths of 1, 2, 4, 8 and 4 nodes) with one leaf pruned (a pass-through
    node): every ELBO term, reach and image as before, from the same random draws."""
    torch.manual_seed(0)
    model = grown(10, spectral_norm)
    model.prune(model.tree.leaves()[-1])
    assert any(model.tree.kind(p) == "passthrough" for p in model.tree.bfs())
    twin = copy.deepcopy(model)
    x = torch.rand(32, 1, 28, 28)
    torch.manual_seed(1)
    out = model(x)
    plain_heads(monkeypatch)
    torch.manual_seed(1)
    twin_out = twin(x)
    for name in ("node_kl", "decision_kl", "reach", "z", "log_ratio", "logit_q"):
        ours, theirs = getattr(out, name), getattr(twin_out, name)
        assert ours.keys() == theirs.keys(), name
        assert all(close(ours[k], theirs[k]) for k in ours), name
    assert close(out.decoder_out, twin_out.decoder_out) and close(out.leaf_probs, twin_out.leaf_probs)
    for o in (out, twin_out):
        (o.decoder_out.sum() + sum(o.node_kl.values()).sum() + sum(o.decision_kl.values()).sum()).backward()
    assert_same_modules([model], [twin])


def test_growth_gives_the_same_tree_with_batched_and_per_node_heads(tmp_path, monkeypatch):
    """A short growth, once as shipped and once with every head called node by node."""
    from structgen.api import train_tree
    from structgen.config import load_config

    keys = SHORT_GROWTH + [f"run.runs_dir={tmp_path}"]
    batched_dir, _ = train_tree(load_config(None, keys + ["run.name=batched"]), evaluate=False)
    plain_heads(monkeypatch)
    plain_dir, _ = train_tree(load_config(None, keys + ["run.name=plain"]), evaluate=False)
    assert_same_growth(batched_dir, plain_dir, first_epoch_rel=1e-4)
