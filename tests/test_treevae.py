"""The TreeVAE process object: sizes (§1.7), ELBO algebra on tiny tensors, routing, attach /
prune / save / rebuild round trips, and that sub-tree training leaves frozen decoders alone."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from structgen.models import gaussian as G
from structgen.models.elbo import Clamps, log_importance_weights, per_sample_nelbo, tree_terms
from structgen.models.objective import SubTreeObjective
from structgen.models.treevae import ModelSpec, SubTree, TreeOutput, TreeVAE

MNIST = ModelSpec((1, 28, 28))
CIFAR = ModelSpec((3, 32, 32), encoder="cnn2", representation_dim=4, latent_channels=64, bottom_up_channels=128,
                  likelihood="mse", res_connections=True, dim_mod_conv=True, contrastive=True)
DEAD_HEADS = {"mnist": 6 * 9_216, "cifar": 6 * 147_456}   # unused mu/var heads of the bottom-up chain
DEAD_SIGMA = 7 * 1_290                                      # unused sigma layer of each CIFAR projection


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def grow_to(model: TreeVAE, n_leaves: int) -> TreeVAE:
    while len(model.tree.leaves()) < n_leaves:
        leaf = min(model.tree.leaves(), key=len)           # shallowest first: a balanced tree
        model.attach(leaf, SubTree(model, leaf))
    return model


def test_parameter_counts_match_reference_minus_documented_dead_parameters():
    torch.manual_seed(0)
    assert n_params(TreeVAE(MNIST)) == 396_118 - DEAD_HEADS["mnist"]
    assert n_params(TreeVAE(CIFAR)) == 5_446_286 - DEAD_HEADS["cifar"] - DEAD_SIGMA
    ten = grow_to(TreeVAE(MNIST), 10)
    assert ten.tree.max_depth() == 4
    assert n_params(ten) == 1_017_206 - DEAD_HEADS["mnist"]


def test_forward_shapes_and_probabilities():
    torch.manual_seed(0)
    model = grow_to(TreeVAE(MNIST), 3)
    x = torch.rand(5, 1, 28, 28)
    out = model(x)
    assert out.leaf_probs.shape == (5, 3) and out.decoder_out.shape == (5, 3, 1, 28, 28)
    assert torch.allclose(out.leaf_probs.sum(1), torch.ones(5), atol=1e-6)
    assert out.z["r"].shape == (5, 16, 2, 2)
    model.eval()
    assert torch.allclose(model.predict(x), model(x).leaf_probs, atol=1e-6)
    images, probs, z = model.generate(4)
    assert images.shape == (4, 3, 1, 28, 28) and ((images >= 0) & (images <= 1)).all()
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-6)


def test_gaussian_helpers_against_torch_distributions():
    torch.manual_seed(0)
    mq, vq, mp, vp = torch.randn(3, 4), torch.rand(3, 4) + 0.1, torch.randn(3, 4), torch.rand(3, 4) + 0.1
    expected = kl_divergence(Normal(mq, (vq + G.EPS).sqrt()), Normal(mp, (vp + G.EPS).sqrt())).sum(1)
    assert torch.allclose(G.kl_normal(mq, vq, mp, vp), expected, atol=1e-5)
    # precision weighting by hand for one element
    mu, var = G.precision_weighted(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([3.0]))
    assert var.item() == pytest.approx(0.75, rel=1e-5) and mu.item() == pytest.approx(1.5, rel=1e-5)
    q, p = 0.8, 0.3
    by_hand = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    logit = lambda v: math.log(v / (1 - v))  # noqa: E731
    assert G.kl_bernoulli_logits(torch.tensor(logit(q)), torch.tensor(logit(p))).item() == pytest.approx(by_hand, rel=1e-5)


def test_elbo_terms_on_hand_computed_tiny_tensors():
    model = TreeVAE(MNIST)     # only leaf_nll is used: BCE on logits
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 0, 0] = 1.0
    logits = torch.zeros(2, 2, 1, 28, 28)           # sigmoid = 0.5 everywhere: BCE = log 2 per pixel
    logits[0, 0] = 100.0                             # sample 0, leaf 0: p≈1 everywhere
    out = TreeOutput(leaves=["r0", "r1"], leaf_probs=torch.tensor([[0.25, 0.75], [0.5, 0.5]]), decoder_out=logits)
    out.reach = {"r": torch.ones(2), "r0": torch.tensor([0.25, 0.5]), "r1": torch.tensor([0.75, 0.5])}
    out.node_kl = {"r": torch.tensor([2.0, 2000.0]), "r0": torch.tensor([4.0, 8.0]), "r1": torch.tensor([0.0, 4000.0])}
    out.decision_kl = {"r": torch.tensor([0.2, 0.4])}
    terms = tree_terms(model, out, x, Clamps())
    nll_half = 784 * math.log(2)
    nll_sat = 783 * 100.0       # BCE(logit 100, target 0) = 100 on 783 pixels, ~0 on the one lit pixel
    rec = (0.25 * nll_sat + 0.75 * nll_half + nll_half) / 2
    assert terms["rec"].item() == pytest.approx(rec, rel=1e-4)
    assert terms["kl_root"].item() == pytest.approx((2.0 + 1000.0) / 2)          # per-sample clamp at 1000
    # non-root: clamp(π·KL) per node then sum: sample0 = 1 + 0, sample1 = 4 + 1000 (2000 clamped)
    assert terms["kl_nodes"].item() == pytest.approx((1.0 + 1004.0) / 2)
    assert terms["kl_decisions"].item() == pytest.approx((0.2 + 0.4) / 2)
    free = tree_terms(model, out, x, Clamps.none())
    assert free["kl_root"].item() == pytest.approx(1001.0)
    assert free["kl_nodes"].item() == pytest.approx((1.0 + 4.0 + 2000.0) / 2)


def test_importance_weights_bound_the_elbo_and_tighten_with_k():
    torch.manual_seed(0)
    model = grow_to(TreeVAE(MNIST), 3).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        elbo = -per_sample_nelbo(model, model(x), x).mean().item()
        k = 20
        logw = torch.stack([log_importance_weights(model, model(x), x) for _ in range(k)])
        ll_k = (torch.logsumexp(logw, 0) - math.log(k)).mean().item()
        ll_1 = logw.mean().item()
    assert math.isfinite(ll_k)
    assert ll_k >= ll_1                       # Jensen: the K-sample bound is tighter
    # summing over leaves marginalises the discrete choice, so even K=1 is no looser than the
    # ELBO (up to the noise of two different draws)
    assert elbo <= ll_1 + 1.0


def test_attach_prune_save_rebuild_round_trip():
    torch.manual_seed(0)
    model = grow_to(TreeVAE(MNIST), 4)
    model.prune("r11")
    assert model.tree.kind("r1") == "passthrough" and "r1" not in model.router and "r11" not in model.decoder
    state = model.to_state()
    assert set(state) == {"spec", "tree", "model"} and isinstance(state["spec"], dict)
    rebuilt = TreeVAE.from_state(state)
    x = torch.rand(4, 1, 28, 28)
    model.eval(), rebuilt.eval()
    assert torch.equal(model.predict(x), rebuilt.predict(x))
    torch.manual_seed(1)
    a = model(x).decoder_out
    torch.manual_seed(1)
    b = rebuilt(x).decoder_out
    assert torch.equal(a, b)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in rebuilt.named_parameters()]
    # strict: weights of another topology are refused, never half-loaded
    del state["model"]["decoder.r10.0.weight"]
    with pytest.raises(RuntimeError, match="decoder.r10.0.weight"):
        TreeVAE.from_state(state)


def test_attach_moves_the_trained_subtree_modules():
    torch.manual_seed(0)
    model = TreeVAE(MNIST)
    sub = SubTree(model, "r0")
    model.attach("r0", sub)
    assert model.decoder["r00"] is sub.decoder[0] and model.router_q["r0"] is sub.router_q
    assert "r0" not in model.decoder


def test_subtree_training_runs_no_frozen_decoder_and_only_the_path():
    torch.manual_seed(0)
    model = grow_to(TreeVAE(MNIST), 4).eval()
    calls = []
    for name, dec in model.decoder.items():
        dec.register_forward_hook(lambda *a, name=name: calls.append(name))
    for name, dense in model.dense.items():
        dense.register_forward_hook(lambda *a, name=name: calls.append("dense:" + name))
    objective = SubTreeObjective(model, SubTree(model, "r01"), Clamps())
    terms = objective(torch.rand(3, 1, 28, 28))
    terms["rec"].backward()
    assert calls == ["dense:r", "dense:r0", "dense:r01"]
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in objective.subtree.decoder.parameters())
    assert [n for n, _ in objective.named_parameters()] == [f"subtree.{n}" for n, _ in objective.subtree.named_parameters()]


def test_route_to_reach_matches_full_forward():
    torch.manual_seed(0)
    model = grow_to(TreeVAE(MNIST), 4).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        _, _, reach = model.route_to(x, "r10")
        full = model(x).reach["r10"]
    assert torch.allclose(reach, full, atol=1e-6)


# ---- spectral-norm placements -----------------------------------------------------------------
def normalised(model) -> set[str]:
    from torch.nn.utils import parametrize
    names = {n for n, m in model.named_modules() if parametrize.is_parametrized(m)}
    assert all(parametrize.is_parametrized(m, "weight") for n, m in model.named_modules() if n in names)
    return names


# The reference's (algorithm.md §8.8): all three cnn1 encoder convs, conv0 and conv1 of each of
# the 6 bottom-up ConvBlocks (body indices 0 and 3: conv, BN, act per stage).
REFERENCE_BOTTOM_UP = ({f"bottom_up.encoder.{i}" for i in (0, 3, 6)}
                       | {f"bottom_up.levels.{level}.body.{i}" for level in range(6) for i in (0, 3)})


@pytest.mark.parametrize("placement", ["none", "decoders", "reference"])
def test_spectral_norm_placement_covers_exactly_its_modules(placement):
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm=placement))
    model.attach("r0", SubTree(model, "r0"))          # growth adds r00, r01 (depth 2) ...
    model.attach("r00", SubTree(model, "r00"))        # ... and r000, r001 (depth 3)
    decoders = {f"decoder.{leaf}.{i}" for leaf in model.tree.leaves() for i in (0, 3, 6)}
    grown_denses = {f"dense.{p}.{head}" for p in ("r00", "r01", "r000", "r001") for head in ("mu", "var")}
    expected = {"none": set(), "decoders": decoders, "reference": REFERENCE_BOTTOM_UP | grown_denses}
    assert normalised(model) == expected[placement]
    # The singular-vector estimates are buffers: no placement changes the parameter count.
    assert n_params(model) == n_params(grow_to(TreeVAE(MNIST), 4))


def test_reference_placement_rebuilds_from_the_topology_alone():
    from dataclasses import asdict
    torch.manual_seed(0)
    model = grow_to(TreeVAE(ModelSpec((1, 28, 28), spectral_norm="reference")), 5)
    model.prune(model.tree.leaves()[-1])
    x = torch.rand(4, 1, 28, 28)
    model(x)                                              # a training-mode pass moves the u/v estimates
    spec = asdict(model.spec)                             # what a checkpoint stores
    rebuilt = TreeVAE(ModelSpec(**{**spec, "image_shape": tuple(spec["image_shape"])}), model.tree)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert normalised(rebuilt) == normalised(model)
    model.eval(), rebuilt.eval()
    assert torch.equal(model.predict(x), rebuilt.predict(x))
    leaf = model.tree.leaves()[0]                         # a sub-tree phase's checkpoint reloads too
    SubTree(rebuilt, leaf).load_state_dict(SubTree(model, leaf).state_dict(), strict=True)


@pytest.mark.parametrize("old, placement", [(True, "decoders"), (False, "none")])
def test_checkpoints_with_the_old_bool_spec_load_strictly(tmp_path, old, placement):
    """Before placements the spec held a bool: true put spectral norm on every decoder conv and
    nowhere else. Such a checkpoint must rebuild with exactly those state-dict keys."""
    from dataclasses import asdict

    from structgen.api import load_model
    from structgen.runtime.checkpoint_io import save_checkpoint
    from structgen.runtime.tree_checkpoint import FORMAT
    torch.manual_seed(0)
    model = grow_to(TreeVAE(ModelSpec((1, 28, 28), spectral_norm=placement)), 3)
    weights = model.state_dict()
    old_keys = {f"decoder.{leaf}.{i}.parametrizations.weight.{part}" for leaf in model.tree.leaves()
                for i in (0, 3, 6) for part in ("original", "0._u", "0._v")} if old else set()
    assert {k for k in weights if ".parametrizations." in k} == old_keys
    path = save_checkpoint({"format": FORMAT, "spec": {**asdict(model.spec), "spectral_norm": old},
                            "tree": model.tree.to_dict(), "model": weights}, tmp_path / "old.pt")
    loaded, _ = load_model(path)                          # strict
    assert loaded.spec.spectral_norm == placement and loaded.tree == model.tree
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
