"""Conditioning: path tables, signal embeddings for leaf / path / none, per-sample condition
dropout, guidance, and conditions built from a (random, untrained) TreeVAE."""
import pytest
import torch

from structgen.diffusion.conditioning import Condition, ConditionalUNet, PathTable, SignalEmbedding, guided_eps
from structgen.diffusion.unet import UNet, UNetSpec
from structgen.diffusion.vae_condition import VAEConditioner, choose_leaf
from structgen.models import ModelSpec, SubTree, TreeVAE
from structgen.tree import Tree


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# r ─ r0 (leaf), r1 ─ r10, r11: paths of different lengths. BFS ids: r 0, r0 1, r1 2, r10 3, r11 4.
TREE = Tree(["r", "r0", "r1", "r10", "r11"])


def test_path_table_lists_node_ids_leaf_to_root_padded_with_a_mask():
    table = PathTable(TREE)
    assert table.ids.tolist() == [[1, 0, 0], [3, 2, 0], [4, 2, 0]]
    assert table.mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 1]]
    z_all = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    path_z, ids, mask = table.gather(z_all, torch.tensor([0, 2]))
    assert path_z.shape == (2, 3, 3)
    assert torch.equal(path_z[0, :2], z_all[0, [1, 0]]) and torch.equal(path_z[1], z_all[1, [4, 2, 0]])
    assert ids.tolist() == [[1, 0, 0], [4, 2, 0]] and mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_path_embedding_is_the_sum_over_real_path_nodes():
    table = PathTable(TREE)
    emb = SignalEmbedding("path", 8, n_nodes=5, z_dim=3)
    z_all = torch.randn(2, 5, 3)
    leaf = torch.tensor([0, 1])
    path_z, ids, mask = table.gather(z_all, leaf)
    cond = Condition(torch.zeros(2, 1, 4, 4), torch.ones(2), path_z=path_z, path_ids=ids, path_mask=mask)
    expected = torch.stack([sum(emb.latent(z_all[b, n]) + emb.node.weight[n] for n in nodes)
                            for b, nodes in enumerate([[1, 0], [3, 2, 0]])])
    assert torch.allclose(emb(cond), expected, atol=1e-6)


def small_vae(depth=2):
    torch.manual_seed(0)
    vae = TreeVAE(ModelSpec(image_shape=(1, 28, 28)))
    if depth == 2:
        vae.attach("r1", SubTree(vae, "r1"))
    return vae.eval()


@pytest.mark.parametrize("kind", ["none", "leaf", "path"])
def test_conditions_from_the_vae_have_the_right_shapes_for_every_kind(kind):
    vae = small_vae()                                            # leaves r0, r10, r11
    cond_src = VAEConditioner(vae, kind)
    x01 = torch.rand(5, 1, 28, 28)
    parts = cond_src.posterior(x01)
    assert parts.images.shape == (5, 3, 1, 28, 28) and parts.probs.shape == (5, 3)
    leaf = choose_leaf(parts.probs, "sample")
    cond = cond_src.condition(parts, leaf)
    assert cond.recon.shape == (5, 1, 28, 28) and cond.recon.min() >= -1 and cond.recon.max() <= 1
    assert torch.allclose(cond.recon, parts.images[torch.arange(5), leaf] * 2 - 1)
    assert (cond.leaf is not None) == (kind == "leaf")
    if kind == "path":
        assert cond.path_z.shape == (5, 3, 16 * 2 * 2) and cond.path_ids.shape == (5, 3)
        assert cond.path_mask.sum(1).tolist() == [2.0 if l == 0 else 3.0 for l in leaf.tolist()]
    every = cond_src.all_leaves(cond_src.prior(2, torch.Generator().manual_seed(0)))
    assert len(every) == 6
    if kind == "leaf":
        assert every.leaf.tolist() == [0, 1, 2, 0, 1, 2]
    signal = SignalEmbedding(kind, 64, cond_src.n_leaves, cond_src.paths.n_nodes, cond_src.z_dim)
    model = ConditionalUNet(UNet(UNetSpec((1, 28, 28), dim=16, n_heads=4, attn_resolutions=[], n_residual=1)), signal)
    out = model(torch.randn(6, 1, 28, 28), torch.arange(6), every)
    assert out.shape == (6, 1, 28, 28)
    assert (signal(every) is None) == (kind == "none")
    if kind != "none":
        assert signal(every).shape == (6, 64)


@pytest.mark.parametrize("kind", ["leaf", "path"])
@pytest.mark.parametrize("spectral_norm", ["none", "reference"])
def test_training_conditions_decode_only_the_chosen_leaf_and_equal_the_full_pass(kind, spectral_norm):
    """What DDPM training draws: the lean pass gives the same leaf, VAE image and path latents as
    the full TreeVAE forward with the same RNG state, decoding only each row's chosen leaf."""
    torch.manual_seed(0)
    vae = TreeVAE(ModelSpec(image_shape=(1, 28, 28), spectral_norm=spectral_norm))
    vae.attach("r1", SubTree(vae, "r1"))
    vae.attach("r10", SubTree(vae, "r10"))
    cond_src = VAEConditioner(vae.eval(), kind)                 # leaves r0, r11, r100, r101
    x01 = torch.rand(40, 1, 28, 28)
    torch.manual_seed(5)
    parts = cond_src.posterior(x01)
    full = cond_src.condition(parts, choose_leaf(parts.probs, "sample"))
    calls = []
    hooks = [vae.decoder[p].register_forward_hook(lambda m, i, o: calls.append(len(o))) for p in cond_src.leaves]
    torch.manual_seed(5)
    lean = cond_src.posterior_condition(x01, "sample")
    for hook in hooks:
        hook.remove()
    assert sum(calls) == 40                                     # one decoder pass per row, not one per leaf
    chosen = lean.leaf if kind == "leaf" else lean.path_ids[:, 0]
    assert len(set(chosen.tolist())) > 1                        # rows of several leaves in the batch
    assert torch.allclose(lean.recon, full.recon, atol=1e-5)
    if kind == "leaf":
        assert torch.equal(lean.leaf, full.leaf)
    else:
        assert torch.equal(lean.path_ids, full.path_ids) and torch.equal(lean.path_z, full.path_z)


def test_leaf_choice_max_is_argmax_and_sample_follows_the_probabilities():
    probs = torch.tensor([[0.1, 0.2, 0.7]]).expand(30000, 3)
    assert choose_leaf(probs, "max").unique().tolist() == [2]
    counts = torch.bincount(choose_leaf(probs, "sample", torch.Generator().manual_seed(0)), minlength=3)
    assert torch.allclose(counts / 30000.0, probs[0], atol=0.01)


def trained_looking_model(kind):
    """A small conditional UNet (8x8 images) whose zero-initialised layers are randomised, so
    every input matters."""
    torch.manual_seed(1)
    signal = SignalEmbedding(kind, 64, n_leaves=3, n_nodes=5, z_dim=4)
    model = ConditionalUNet(UNet(UNetSpec((1, 8, 8), dim=16, dim_mults=[1, 2], n_heads=4, attn_resolutions=[],
                                          n_residual=1)), signal).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and not m.weight.abs().sum():
            torch.nn.init.normal_(m.weight, std=0.05)
    return model


def random_condition(kind, n=8):
    table = PathTable(TREE)
    leaf = torch.randint(0, 3, (n,))
    cond = Condition(torch.rand(n, 1, 8, 8) * 2 - 1, torch.ones(n))
    if kind == "leaf":
        cond.leaf = leaf
    elif kind == "path":
        cond.path_z, cond.path_ids, cond.path_mask = table.gather(torch.randn(n, 5, 4), leaf)
    return cond


@pytest.mark.parametrize("kind", ["none", "leaf", "path"])
def test_condition_dropout_is_per_sample_and_dropped_rows_match_the_unconditional_model(kind):
    model = trained_looking_model(kind)
    cond = random_condition(kind)
    dropped = cond.with_dropout(0.5, torch.Generator().manual_seed(3))
    keep = dropped.keep.bool()
    assert 0 < keep.sum() < len(keep)                                   # neither all nor none
    x, t = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        out, cond_out, uncond_out = model(x, t, dropped), model(x, t, cond), model(x, t, cond.dropped())
    assert torch.allclose(out[keep], cond_out[keep], atol=1e-5)
    assert torch.allclose(out[~keep], uncond_out[~keep], atol=1e-5)
    assert not torch.allclose(cond_out, uncond_out, atol=1e-3)
    rates = torch.stack([random_condition(kind, 1000).with_dropout(0.2).keep.mean() for _ in range(3)])
    assert torch.allclose(rates, torch.full((3,), 0.8), atol=0.05)


@pytest.mark.parametrize("kind", ["none", "leaf", "path"])
def test_the_unconditional_branch_sees_no_condition_at_all(kind):
    """Two unrelated conditions (other VAE images, leaves, paths), both dropped: the same output."""
    model = trained_looking_model(kind)
    a, b = random_condition(kind), random_condition(kind)
    x, t = torch.randn(8, 1, 8, 8), torch.randint(0, 1000, (8,))
    with torch.no_grad():
        assert not torch.allclose(model(x, t, a), model(x, t, b), atol=1e-3)     # the conditions do matter
        assert torch.equal(model(x, t, a.dropped()), model(x, t, b.dropped()))


@pytest.mark.parametrize("kind", ["leaf", "path"])
def test_guidance_weight_0_is_the_conditional_model_and_w_mixes_cond_and_uncond(kind):
    model = trained_looking_model(kind)
    cond = random_condition(kind, 4)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,))
    with torch.no_grad():
        e_c, e_u = model(x, t, cond), model(x, t, cond.dropped())
        assert torch.equal(guided_eps(model, x, t, cond, 0.0), e_c)
        assert torch.allclose(guided_eps(model, x, t, cond, 1.5), 2.5 * e_c - 1.5 * e_u, atol=1e-4)
