"""Building blocks of the CNN-TreeVAE: shapes, behaviour and the parameter counts of algorithm.md §1.7.

The reference counts were measured on the reference implementation; where we deliberately drop
parameters the reference never uses (dead mu/var heads of the bottom-up ConvBlocks, the dead
sigma head of the contrastive projection) the expected value is written as
"reference count minus the dropped part" so the derivation stays visible.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from structgen.nn import (
    BottomUp,
    ConvBlock,
    Dense,
    Projection,
    ResBlock,
    Router,
    Transformation,
    build_decoder,
    build_encoder,
    info_nce,
    make_activation,
)
from structgen.nn.blocks import int_linspace


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- reference configurations (algorithm.md §1.1) -------------------------------------------
MNIST = dict(kind="cnn1", in_ch=1, size=28, r=2, c_d=32, c_z=16, act="swish", dim_mod_conv=False)
CIFAR = dict(kind="cnn2", in_ch=3, size=32, r=4, c_d=128, c_z=64, act="swish", dim_mod_conv=True)
LEVELS = 7


def encoder(cfg, **over):
    c = {**cfg, **over}
    return build_encoder(c["kind"], c["in_ch"], c["size"], c["c_d"], c["r"], c["act"], c["dim_mod_conv"])


def decoder(cfg, spectral_norm=False, **over):
    c = {**cfg, **over}
    return build_decoder(c["kind"], c["c_z"], c["in_ch"], c["size"], c["r"], c["act"], c["dim_mod_conv"], spectral_norm)


def bottom_up(cfg, residual=False, **over):
    c = {**cfg, **over}
    return BottomUp(c["kind"], c["in_ch"], c["size"], [c["c_d"]] * LEVELS, c["r"], c["act"], residual, c["dim_mod_conv"])


# ---- activations ----------------------------------------------------------------------------
def test_activations():
    assert isinstance(make_activation("swish"), nn.SiLU)
    assert isinstance(make_activation("relu"), nn.ReLU)
    x = torch.tensor([-2.0, 3.0])
    assert torch.allclose(make_activation("leaky_relu")(x), torch.tensor([-0.6, 3.0]))
    with pytest.raises(ValueError, match="swish.*leaky_relu.*relu"):
        make_activation("gelu")


def test_int_linspace_truncates_like_the_reference():
    assert int_linspace(1, 32, 4) == [1, 11, 21, 32]
    assert int_linspace(28, 2, 4) == [28, 19, 10, 2]
    assert int_linspace(8, 128, 4) == [8, 48, 88, 128]
    assert int_linspace(64, 8, 4) == [64, 45, 26, 8]


# ---- parameter counts (algorithm.md §1.7) -----------------------------------------------------
MNIST_HEADS = 2 * 32 * 16 * 9  # 9,216: the dead mu/var heads of one bottom-up ConvBlock
CIFAR_HEADS = 2 * 128 * 64 * 9  # 147,456
PROJ_SIGMA_HEAD = 128 * 10 + 10  # 1,290: the reference projection's unused sigma Linear


def test_mnist_parameter_counts():
    c_d, c_z, r, act = 32, 16, 2, "swish"
    assert n_params(encoder(MNIST)) == 67_904
    assert n_params(ConvBlock(c_d, c_d, c_z, act, residual=False)) == 37_056
    assert n_params(ConvBlock(c_d, c_d, c_z, act, residual=False, with_heads=False)) == 27_840
    assert n_params(Transformation(c_z, c_d, act, residual=False)) == 18_560
    assert n_params(Dense(c_d, c_z)) == 9_216
    assert n_params(Router(c_z, r, c_d, act, 0.0)) == 1_457
    assert n_params(Router(c_d, r, c_d, act, 0.0)) == 1_601
    assert n_params(decoder(MNIST)) == 19_026
    bu = bottom_up(MNIST)
    assert n_params(bu) == 290_240 - 6 * MNIST_HEADS
    # The whole depth-1 reference model, rebuilt from these parts plus the heads we drop.
    depth1 = n_params(bu) + 2 * 18_560 + 3 * 9_216 + 1_457 + 1_601 + 2 * 19_026
    assert depth1 + 6 * MNIST_HEADS == 396_118


def test_cifar_parameter_counts():
    c_d, c_z, r, act = 128, 64, 4, "swish"
    assert n_params(encoder(CIFAR)) == 435_584
    assert n_params(ConvBlock(c_d, c_d, c_z, act, residual=True)) == 590_592
    projections = [Projection(c_d, r, act) for _ in range(LEVELS)]
    assert n_params(*projections) == 42_252 - LEVELS * PROJ_SIGMA_HEAD
    assert n_params(Transformation(c_z, c_d, act, residual=True)) == 295_424
    assert n_params(Dense(c_d, c_z)) == 147_456
    assert n_params(Router(c_z, r, c_d, act, 0.0)) == 19_649
    assert n_params(Router(c_d, r, c_d, act, 0.0)) == 20_225
    assert n_params(decoder(CIFAR)) == 175_904
    assert n_params(bottom_up(CIFAR)) == 3_979_136 - 6 * CIFAR_HEADS


def test_avgpool_and_bilinear_variants_drop_exactly_the_resampling_convs():
    strided = sum(c * c * 9 + c for c in (8, 48, 88))  # stride-2 convs, with bias
    transposed = sum(c * c * 16 for c in (45, 26, 8))  # ConvT 4x4, no bias
    assert n_params(encoder(CIFAR, dim_mod_conv=False)) == 435_584 - strided
    assert n_params(decoder(CIFAR, dim_mod_conv=False)) == 175_904 - transposed


# ---- shapes -------------------------------------------------------------------------------------
def test_mnist_shapes():
    x = torch.rand(3, 1, 28, 28)
    assert encoder(MNIST)(x).shape == (3, 32, 2, 2)
    assert decoder(MNIST)(torch.randn(3, 16, 2, 2)).shape == (3, 1, 28, 28)
    feats = bottom_up(MNIST)(x)
    assert len(feats) == LEVELS and all(f.shape == (3, 32, 2, 2) for f in feats)


def test_cifar_shapes_both_resampling_modes():
    x = torch.rand(2, 3, 32, 32)
    for dim_mod_conv in (True, False):
        enc = encoder(CIFAR, dim_mod_conv=dim_mod_conv)
        dec = decoder(CIFAR, dim_mod_conv=dim_mod_conv)
        assert enc(x).shape == (2, 128, 4, 4)
        assert dec(torch.randn(2, 64, 4, 4)).shape == (2, 3, 32, 32)
    avg = encoder(CIFAR, dim_mod_conv=False)
    assert sum(isinstance(m, nn.AvgPool2d) for m in avg.modules()) == 3
    bil = decoder(CIFAR, dim_mod_conv=False)
    assert sum(isinstance(m, nn.Upsample) for m in bil.modules()) == 3
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in bil.modules())


@pytest.mark.parametrize("r", [1, 4, 7])
def test_cnn1_other_latent_sizes(r):
    x = torch.rand(2, 1, 28, 28)
    assert encoder(MNIST, r=r)(x).shape == (2, 32, r, r)
    assert decoder(MNIST, r=r)(torch.randn(2, 16, r, r)).shape == (2, 1, 28, 28)


def test_cnn2_64px_uses_four_steps():
    enc = encoder(CIFAR, size=64)
    assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 128, 4, 4)
    assert decoder(CIFAR, size=64)(torch.randn(2, 64, 4, 4)).shape == (2, 3, 64, 64)
    assert sum(isinstance(m, ResBlock) for m in enc.modules()) == 5


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="cnn1.*cnn2"):
        encoder(MNIST, kind="mlp")
    with pytest.raises(ValueError, match="cnn1.*cnn2"):
        decoder(MNIST, kind="mlp")
    with pytest.raises(ValueError, match="power of two"):
        encoder(CIFAR, r=3)
    with pytest.raises(ValueError, match="power of two"):
        decoder(CIFAR, size=48, r=4)
    with pytest.raises(ValueError, match="r <= image_size"):
        encoder(MNIST, r=30)


# ---- decoders: pre-activation output and spectral norm ----------------------------------------
def test_decoder_outputs_are_pre_activation():
    dec = decoder(MNIST)
    with torch.no_grad():
        nn.init.constant_(dec[-1].weight, 1.0)  # big positive weights push outputs far past 1
        out = dec(torch.randn(4, 16, 2, 2) * 3)
    assert out.max() > 1 or out.min() < 0


def test_spectral_norm_only_where_asked():
    plain = decoder(MNIST)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    for cfg in (MNIST, CIFAR):
        dec = decoder(cfg, spectral_norm=True)
        convs = [m for m in dec.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
        # The singular-vector estimates are buffers: the parameter count does not change.
        assert n_params(dec) == n_params(decoder(cfg))
        z = torch.randn(2, cfg["c_z"], cfg["r"], cfg["r"])
        assert dec(z).shape == (2, cfg["in_ch"], cfg["size"], cfg["size"])
    # Nothing else in the package spectral-normalises.
    for module in (encoder(MNIST), bottom_up(MNIST), Dense(32, 16), Router(16, 2, 32, "swish", 0.0)):
        assert not any(parametrize.is_parametrized(m) for m in module.modules())


def test_reference_spectral_norm_in_the_bottom_up_chain():
    """The reference normalises every encoder conv but cnn2's stride-2 down-samplers, and conv0 /
    conv1 of each ConvBlock, never conv2 (algorithm.md §8.8); other placements leave it plain."""
    from structgen.nn.spectral import apply_to_bottom_up
    for cfg in (MNIST, {**CIFAR, "c_d": 16}):
        for placement in ("none", "decoders"):
            plain = apply_to_bottom_up(placement, bottom_up(cfg))
            assert not any(parametrize.is_parametrized(m) for m in plain.modules())
        chain = apply_to_bottom_up("reference", bottom_up(cfg))
        convs = {n: m for n, m in chain.named_modules() if isinstance(m, nn.Conv2d)}
        normalised = {n for n, m in convs.items() if parametrize.is_parametrized(m, "weight")}
        encoder = {n for n in convs if n.startswith("encoder.")}
        down_samplers = {"cnn1": set(), "cnn2": {"encoder.2", "encoder.4", "encoder.6"}}[cfg["kind"]]
        assert all(convs[n].stride == (2, 2) for n in down_samplers)
        blocks = {f"levels.{level}.body.{i}" for level in range(LEVELS - 1) for i in (0, 3)}
        assert normalised == (encoder - down_samplers) | blocks
        assert n_params(chain) == n_params(bottom_up(cfg))


# ---- blocks and heads -----------------------------------------------------------------------------
def _twins(make):
    a, b = make(True), make(False)
    b.load_state_dict(a.state_dict())
    return a.eval(), b.eval()


def test_convblock_residual_adds_the_input_when_channels_match():
    with_res, without = _twins(lambda res: ConvBlock(8, 8, 4, "swish", residual=res))
    assert with_res.residual and not without.residual
    x = torch.randn(3, 8, 4, 4)
    h_res, mu_res, _ = with_res(x)
    h, mu, _ = without(x)
    assert torch.allclose(h_res - h, x, atol=1e-6)
    assert not torch.allclose(mu_res, mu)  # heads read the residual output
    mismatched = ConvBlock(4, 8, 4, "swish", residual=True)
    assert not mismatched.residual
    assert mismatched(torch.randn(2, 4, 3, 3))[0].shape == (2, 8, 3, 3)


def test_convblock_heads():
    block = ConvBlock(8, 6, 5, "relu", residual=False)
    h, mu, var = block(torch.randn(3, 8, 2, 2))
    assert h.shape == (3, 6, 2, 2) and mu.shape == var.shape == (3, 5, 2, 2)
    assert (var > 0).all()
    bare = ConvBlock(8, 6, 0, "relu", residual=False, with_heads=False)
    out = bare(torch.randn(3, 8, 2, 2))
    assert out[0].shape == (3, 6, 2, 2) and out[1] is None and out[2] is None
    assert n_params(block) - n_params(bare) == 2 * 6 * 5 * 9


def test_bottom_up_residual_and_chain():
    with_res, without = _twins(lambda res: bottom_up(MNIST, residual=res))
    x = torch.rand(2, 1, 28, 28)
    f_res, f = with_res(x), without(x)
    assert torch.equal(f_res[0], f[0])  # the encoder has no residual option
    level1 = without.levels[0](f[0])[0]
    assert torch.allclose(f_res[1] - level1, f[0], atol=1e-6)


def test_resblock_scales_the_residual_by_a_tenth():
    same = ResBlock(6, 6, "swish").eval()
    assert isinstance(same.skip, nn.Identity)
    x = torch.randn(2, 6, 4, 4)
    assert torch.allclose(same(x) - x, 0.1 * same.residual(x), atol=1e-6)
    grow = ResBlock(6, 10, "swish").eval()
    assert isinstance(grow.skip, nn.Conv2d) and grow.skip.kernel_size == (1, 1) and grow.skip.bias is None
    assert torch.allclose(grow(x) - grow.skip(x), 0.1 * grow.residual(x), atol=1e-6)


def test_dense_and_transformation():
    mu, var = Dense(32, 16)(torch.randn(3, 32, 2, 2))
    assert mu.shape == var.shape == (3, 16, 2, 2) and (var > 0).all()
    t = Transformation(16, 32, "swish", residual=True)
    assert not t.block.residual  # C_z != C_d: nothing to add (reference quirk §8.7, made explicit)
    mu_p, var_p = t(torch.randn(3, 16, 2, 2))
    assert mu_p.shape == var_p.shape == (3, 16, 2, 2) and (var_p > 0).all()
    assert Transformation(32, 32, "swish", residual=True).block.residual


def test_router_returns_logits_per_sample():
    router = Router(16, 2, 32, "swish", dropout=0.5)
    z = torch.randn(5, 16, 2, 2)
    logits = router(z)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    router.eval()
    assert torch.equal(router(z), router(z))  # dropout off in eval
    with torch.no_grad():
        router.mlp[-1].bias.fill_(10.0)  # only a logit, not a probability, can exceed 1
    assert (router(z) > 1).all()


def test_projection_shape():
    proj = Projection(128, 4, "swish")
    assert proj(torch.randn(6, 128, 4, 4)).shape == (6, 10)


# ---- InfoNCE ----------------------------------------------------------------------------------------
def _hand_info_nce(a, b, temperature, weights=None):
    """The textbook formula, written out sample by sample."""
    views = [list(v) for v in a] + [list(v) for v in b]
    views = [[c / math.hypot(*v) for c in v] for v in views]
    n2 = len(views)
    n = n2 // 2

    def sim(i, k):
        return math.exp(sum(x * y for x, y in zip(views[i], views[k])) / temperature)

    losses = []
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(sim(i, k) for k in range(n2) if k != i)
        losses.append(-math.log(sim(i, pos) / denom))
    if weights is None:
        return sum(losses) / n2
    return sum(w * l for w, l in zip(weights, losses)) / sum(weights)


A = [[1.0, 0.0], [0.0, 2.0]]
B = [[1.0, 1.0], [3.0, -1.0]]


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_info_nce_matches_hand_computation(temperature):
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
    got = info_nce(a, b, temperature)
    assert got.item() == pytest.approx(_hand_info_nce(A, B, temperature), rel=1e-10)


def test_info_nce_weights():
    a, b = torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)
    pair_w = torch.tensor([0.2, 0.6], dtype=torch.float64, requires_grad=True)
    expected = _hand_info_nce(A, B, 0.5, [0.2, 0.6, 0.2, 0.6])
    got = info_nce(a, b, 0.5, pair_w)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    per_sample_w = [0.1, 0.4, 0.3, 0.9]
    got = info_nce(a, b, 0.5, torch.tensor(per_sample_w, dtype=torch.float64))
    assert got.item() == pytest.approx(_hand_info_nce(A, B, 0.5, per_sample_w), rel=1e-10)
    # Weights are detached: the loss trains the embeddings, never the reach probabilities.
    info_nce(a.requires_grad_(), b, 0.5, pair_w).backward()
    assert pair_w.grad is None and a.grad is not None
    with pytest.raises(ValueError, match="weights"):
        info_nce(a, b, 0.5, torch.ones(3))


def test_info_nce_is_stable_at_tiny_temperature():
    a, b = torch.randn(16, 10), torch.randn(16, 10)
    loss = info_nce(a.requires_grad_(), b, 1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()
    # Identical views, orthogonal to every other sample, at a low temperature: loss ~ 6*exp(-20).
    assert info_nce(torch.eye(4), torch.eye(4), 0.05).item() < 1e-6
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.randn(3, 2), torch.randn(4, 2), 0.5)
