"""The grouped leaf decoding (structgen.nn.leaf_decoding) is the per-leaf decoding, faster.

Same outputs, gradients and BatchNorm statistics as running each leaf's decoder on its own, for
every decoder family and spectral-norm placement; and the same tree after a short growth.
"""
import copy

import pytest
import torch
from conftest import SHORT_GROWTH, assert_same_growth

from structgen.nn.decoders import build_decoder
from structgen.nn.leaf_decoding import decode_leaves


def per_leaf(decoders, latents):
    """The plain procedure: one decoder call per leaf."""
    return torch.stack([decoder(z) for decoder, z in zip(decoders, latents)], dim=1)


def close(a, b, rtol=1e-4):
    scale = b.abs().max().clamp_min(1e-12)
    return (a - b).abs().max() / scale < rtol


@pytest.mark.parametrize("kind,channels,side,r,spectral", [
    ("cnn1", 1, 28, 2, False), ("cnn1", 3, 28, 2, True), ("cnn2", 3, 32, 4, False), ("cnn2", 1, 32, 8, True)])
def test_grouped_decoding_matches_per_leaf_outputs_gradients_and_statistics(kind, channels, side, r, spectral):
    torch.manual_seed(0)
    decoders = [build_decoder(kind, 16, channels, side, r, "swish", False, spectral) for _ in range(5)]
    twins = copy.deepcopy(decoders)
    latents = [torch.randn(12, 16, r, r) for _ in decoders]
    target = torch.rand(12, 5, channels, side, side)

    grouped = decode_leaves(decoders, latents)
    plain = per_leaf(twins, latents)
    assert grouped.shape == (12, 5, channels, side, side)
    assert close(grouped, plain)

    torch.nn.functional.binary_cross_entropy_with_logits(grouped, target).backward()
    torch.nn.functional.binary_cross_entropy_with_logits(plain, target).backward()
    # One scale for all gradients: a bias before a BatchNorm has a true gradient of 0, so its
    # float noise (1e-12) is only compared with the model's gradients as a whole.
    grads = torch.cat([p.grad.flatten() for d in decoders for p in d.parameters()])
    twin_grads = torch.cat([p.grad.flatten() for d in twins for p in d.parameters()])
    assert close(grads, twin_grads)
    for decoder, twin in zip(decoders, twins):
        for (name, b), c in zip(decoder.named_buffers(), twin.buffers()):
            assert torch.allclose(b.float(), c.float(), rtol=1e-4, atol=1e-6), name


def test_mismatched_last_layers_fall_back_to_per_leaf():
    torch.manual_seed(0)
    decoders = [build_decoder("cnn1", 16, 1, 28, 2, "swish", False, False),
                build_decoder("cnn1", 16, 1, 28, 4, "swish", False, False)]   # another latent side
    latents = [torch.randn(3, 16, 2, 2), torch.randn(3, 16, 4, 4)]
    assert torch.equal(decode_leaves(decoders, latents), per_leaf(decoders, latents))


def test_tree_forward_uses_each_leafs_own_decoder():
    from structgen.models.treevae import ModelSpec, TreeVAE
    from structgen.tree.topology import Tree

    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28)), Tree.complete(2)).eval()
    out = model(torch.rand(6, 1, 28, 28))
    plain = per_leaf([model.decoder[p] for p in out.leaves], [out.z[p] for p in out.leaves])
    assert close(out.decoder_out, plain)


def test_growth_gives_the_same_tree_with_grouped_and_per_leaf_decoding(tmp_path, monkeypatch):
    """A short growth, once as shipped and once with every decoder called per leaf."""
    from structgen.api import train_tree
    from structgen.config import load_config
    from structgen.models import treevae

    keys = SHORT_GROWTH + [f"run.runs_dir={tmp_path}"]
    grouped_dir, _ = train_tree(load_config(None, keys + ["run.name=grouped"]), evaluate=False)
    monkeypatch.setattr(treevae, "decode_leaves", per_leaf)
    plain_dir, _ = train_tree(load_config(None, keys + ["run.name=plain"]), evaluate=False)
    assert_same_growth(grouped_dir, plain_dir, first_epoch_rel=1e-4)
