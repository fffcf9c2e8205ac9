"""The convolutions of structgen.nn.dense_conv compute what torch's do, by other kernels on CPU.

Every path (small matrix, transposed as a multiply, transposed as a direct conv) against the
same layer run natively: outputs, gradients of input, weight and bias; spectral norm's power
iteration advances once per forward as in torch; state dicts are torch's; what must stay
native does; and a short growth gives the same tree either way.
"""
import copy

import pytest
import torch
from conftest import SHORT_GROWTH, assert_same_growth
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from structgen.nn import dense_conv
from structgen.nn.dense_conv import (Conv2d, ConvTranspose2d, _weight_grad_by_swapped_conv, native_convolutions,
                                     runs_natively)

# (layer, input shape, the path it must take): the CNN-TreeVAE's MNIST geometries and a few others.
# A pair is (with AVX-512, on an AVX2-only CPU): the direct form of a stride-1 transposed conv is
# fast only with AVX-512, and without it every large kernel takes its weight gradient as the
# swapped conv, with it only those on small maps (dense_conv._cpu_has_avx512); both kinds are
# checked on any machine.
CASES = [
    (lambda: Conv2d(32, 16, 3, padding=1, bias=True), (7, 32, 2, 2), "small-matmul"),
    (lambda: Conv2d(21, 32, 7, stride=5, padding=1, bias=False), (7, 21, 10, 10), "small-matmul"),
    (lambda: ConvTranspose2d(16, 11, 7, stride=5, padding=1, bias=False), (7, 16, 2, 2), "small-matmul"),
    (lambda: Conv2d(32, 1, 7, stride=5, padding=1, bias=True), (7, 32, 12, 12), "small-matmul"),  # in chunks
    (lambda: ConvTranspose2d(4, 5, 3, stride=2, padding=1, output_padding=1, bias=True), (7, 4, 3, 5), "small-matmul"),
    (lambda: ConvTranspose2d(6, 1, 12, padding=1, bias=False), (7, 6, 19, 19), "transposed-matmul"),
    (lambda: ConvTranspose2d(6, 3, 12, padding=1, bias=True), (7, 6, 19, 15), "transposed-matmul"),
    (lambda: ConvTranspose2d(11, 6, 12, padding=1, bias=False), (7, 11, 10, 10),
     ("transposed-direct", "transposed-matmul")),
    (lambda: ConvTranspose2d(16, 16, 12, padding=1, bias=True), (7, 16, 16, 16),
     ("transposed-direct", "transposed-matmul")),                                 # a large matrix, a narrow band
    (lambda: ConvTranspose2d(8, 8, 12, padding=1, bias=False), (7, 8, 40, 40),
     ("transposed-direct", "own-backward")),                                      # a wide band
    (lambda: ConvTranspose2d(8, 8, 4, stride=2, padding=1, bias=True), (7, 8, 16, 16), "native"),
    (lambda: Conv2d(1, 11, 12, padding=1, bias=False), (7, 1, 28, 28), ("native", "own-backward")),
    (lambda: Conv2d(11, 22, 12, padding=1, bias=True), (7, 11, 19, 19), "own-backward"),
    (lambda: Conv2d(6, 5, 11, padding=3, bias=False), (7, 6, 36, 30), ("native", "own-backward")),  # a wide band
    (lambda: ConvTranspose2d(5, 4, (12, 11), padding=(2, 1), bias=False), (7, 5, 9, 13),
     ("transposed-direct", "transposed-matmul")),                                 # rectangular, two paddings
    (lambda: Conv2d(4, 5, (11, 12), padding=(1, 2), bias=False), (7, 4, 20, 18), "own-backward"),  # 12x11 out
    (lambda: Conv2d(8, 8, 3, padding=1, bias=False), (7, 8, 32, 32), "native"),      # small kernel: oneDNN's
    (lambda: ConvTranspose2d(6, 6, 9, padding=1, bias=False), (7, 6, 24, 24), ("transposed-direct", "native")),
]


def close(a, b, rtol=1e-5):
    return (a - b).abs().max() <= rtol * b.abs().max().clamp_min(1e-12)


def forward_backward(layer, x, grad_out=None):
    x = x.clone().requires_grad_()
    y = layer(x)
    grad_out = torch.randn_like(y, generator=torch.Generator().manual_seed(1)) if grad_out is None else grad_out
    y.backward(grad_out)
    return y.detach(), x.grad, [p.grad.clone() for p in layer.parameters()], grad_out


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "avx2"])
@pytest.mark.parametrize("make,shape,path", CASES)
def test_each_path_computes_torchs_convolution_and_gradients(make, shape, path, avx512, monkeypatch):
    monkeypatch.setattr(dense_conv, "_cpu_has_avx512", lambda: avx512)
    if isinstance(path, tuple):
        path = path[0] if avx512 else path[1]
    torch.manual_seed(0)
    layer = make()
    twin = copy.deepcopy(layer)
    x = torch.randn(shape)
    assert dense_conv._plan(x, layer, isinstance(layer, ConvTranspose2d)) == path
    assert runs_natively(layer, x) == (path == "native")
    y, gx, gparams, g = forward_backward(layer, x)
    with native_convolutions():
        assert runs_natively(twin, x)
        y_ref, gx_ref, gparams_ref, _ = forward_backward(twin, x, g)
    assert y.shape == y_ref.shape
    assert close(y, y_ref) and close(gx, gx_ref)
    for grad, grad_ref in zip(gparams, gparams_ref):
        assert close(grad, grad_ref)


# The CNN-TreeVAE's 12x12 layers (MNIST, FMNIST, digits) and whether each takes its weight
# gradient as the swapped conv: (with AVX-512, on an AVX2-only CPU).
SWAPS = [
    (lambda: Conv2d(1, 11, 12, padding=1), (7, 1, 28, 28), (False, True)),                 # encoder, on the images
    (lambda: Conv2d(11, 21, 12, padding=1), (7, 11, 19, 19), (True, True)),                # encoder, onto 10x10
    (lambda: ConvTranspose2d(11, 6, 12, padding=1), (7, 11, 10, 10), (True, True)),       # decoder, from 10x10
    (lambda: ConvTranspose2d(6, 1, 12, padding=1), (7, 6, 19, 19), (False, True)),        # decoder, onto the image
    (lambda: ConvTranspose2d(16, 16, 12, padding=1), (7, 16, 16, 16), (False, True)),     # both maps larger than 12
    (lambda: Conv2d(8, 8, 3, padding=1), (7, 8, 32, 32), (False, False)),                 # a small kernel: never
]


@pytest.mark.parametrize("in_channels_last", [False, True], ids=["nchw-in", "channels-last-in"])
@pytest.mark.parametrize("out_channels_last", [False, True], ids=["nchw-out", "channels-last-out"])
@pytest.mark.parametrize("make,shape", [(lambda: Conv2d(32, 16, 3, padding=1, bias=True), (7, 32, 2, 2)),
                                        (lambda: ConvTranspose2d(4, 5, 3, stride=2, padding=1, output_padding=1),
                                         (7, 4, 3, 5))])
def test_the_small_multiply_takes_and_gives_channels_last_tensors(make, shape, in_channels_last, out_channels_last):
    torch.manual_seed(0)
    layer = make()
    layer.channels_last_output = out_channels_last
    twin = copy.deepcopy(layer)
    x = torch.randn(*shape)
    if in_channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert dense_conv._plan(x, layer, isinstance(layer, ConvTranspose2d)) == "small-matmul"
    y, gx, gw, grad_out = forward_backward(layer, x)
    assert y.is_contiguous(memory_format=torch.channels_last if out_channels_last else torch.contiguous_format)
    assert gx.is_contiguous(memory_format=torch.channels_last if in_channels_last else torch.contiguous_format)
    with native_convolutions():
        y_ref, gx_ref, gw_ref, _ = forward_backward(twin, x.contiguous(), grad_out.contiguous())
    assert close(y, y_ref) and close(gx, gx_ref)
    assert all(close(a, b) for a, b in zip(gw, gw_ref))


@pytest.mark.parametrize("in_channels_last", [False, True], ids=["chw-in", "hwc-in"])
@pytest.mark.parametrize("out_channels_last", [False, True], ids=["chw-out", "hwc-out"])
@pytest.mark.parametrize("make,shape", [(lambda: Conv2d(16, 32, 3, padding=1), (7, 16, 2, 2)),
                                        (lambda: Conv2d(5, 3, 3, stride=2, padding=1), (7, 5, 5, 4))])
def test_stacked_small_convolutions_are_each_layers_own(make, shape, in_channels_last, out_channels_last):
    """k layers of one geometry on k inputs in one batched multiply: each output and gradient
    is that layer's convolution of its own input, in the flat layout asked for."""
    torch.manual_seed(0)
    layers = [make() for _ in range(3)]
    xs = [torch.randn(*shape) for _ in layers]
    weights = torch.stack([layer.weight.detach() for layer in layers]).requires_grad_()
    order = (lambda t: t.permute(0, 2, 3, 1)) if in_channels_last else (lambda t: t)
    flat_in = torch.stack([order(x).reshape(shape[0], -1) for x in xs]).requires_grad_()
    assert dense_conv.runs_as_small_multiply(layers[0], xs[0])
    y, out_shape = dense_conv.stacked_small_conv(layers[0], flat_in, weights, tuple(shape[2:]),
                                                 in_channels_last, out_channels_last)
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    for i, (layer, x) in enumerate(zip(layers, xs)):
        x = x.clone().requires_grad_()
        ref = torch.nn.functional.conv2d(x, layer.weight, None, layer.stride, layer.padding)
        assert tuple(ref.shape[1:]) == out_shape
        ref_flat = (ref.permute(0, 2, 3, 1) if out_channels_last else ref).reshape(shape[0], -1)
        g = grad_out[i].view(ref_flat.shape)
        ref_flat.backward(g)
        assert close(y[i], ref_flat)
        assert close(flat_in.grad[i], order(x.grad).reshape(shape[0], -1))
        assert close(weights.grad[i], layer.weight.grad)


def test_a_convolution_with_stacked_weights_is_each_layers_own():
    """Layers that read one input, as one convolution with their weights on the output channels."""
    torch.manual_seed(0)
    for shape in ((6, 32, 2, 2), (2, 32, 40, 40)):                   # a small multiply, and native
        layers = [Conv2d(32, 16, 3, padding=1) for _ in range(4)]
        x = torch.randn(*shape)
        y = dense_conv.conv_with_weight(layers[0], x, torch.cat([layer.weight for layer in layers]))
        for i, layer in enumerate(layers):
            with native_convolutions():
                assert close(y[:, 16 * i:16 * (i + 1)], layer._conv_forward(x, layer.weight, None))


def test_conv_blocks_run_channels_last_inside_and_hand_on_nchw():
    from structgen.nn import ConvBlock

    torch.manual_seed(0)
    block = ConvBlock(16, 32, 16, "swish", residual=False, with_heads=True)
    twin = copy.deepcopy(block)
    seen = []
    for module in block.body:
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda m, inp, out: seen.append(inp[0].is_contiguous(
                memory_format=torch.channels_last)))
    x = torch.randn(64, 16, 2, 2, requires_grad=True)
    outs = block(x)
    assert seen == [True, True, True]                    # every BatchNorm saw a channels-last map
    assert all(t.is_contiguous() for t in outs)
    sum(t.square().sum() for t in outs).backward()
    x_ref = x.detach().clone().requires_grad_()
    with native_convolutions():
        outs_ref = twin(x_ref)
        sum(t.square().sum() for t in outs_ref).backward()
    assert all(close(a.detach(), b.detach()) for a, b in zip(outs, outs_ref))
    assert close(x.grad, x_ref.grad)
    assert all(close(p.grad, q.grad, rtol=1e-4) for p, q in zip(block.parameters(), twin.parameters()))


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "avx2"])
@pytest.mark.parametrize("make,shape,swaps", SWAPS)
def test_which_layers_take_the_swapped_weight_gradient(make, shape, swaps, avx512, monkeypatch):
    monkeypatch.setattr(dense_conv, "_cpu_has_avx512", lambda: avx512)
    layer = make()
    swapped = []
    monkeypatch.setattr(dense_conv, "_weight_grad_by_swapped_conv",
                        lambda *args: swapped.append(1) or _weight_grad_by_swapped_conv(*args))
    layer(torch.randn(shape)).sum().backward()
    assert bool(swapped) == swaps[0 if avx512 else 1]


def test_frozen_weights_and_no_grad_take_the_same_paths():
    torch.manual_seed(0)
    layer = ConvTranspose2d(6, 1, 12, padding=1, bias=False).requires_grad_(False)
    x = torch.randn(5, 6, 19, 19, requires_grad=True)
    layer(x).sum().backward()
    with native_convolutions():
        x_ref = x.detach().clone().requires_grad_()
        layer(x_ref).sum().backward()
    assert close(x.grad, x_ref.grad) and layer.weight.grad is None
    small = Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        out = small(torch.ones(2, 16, 2, 2))
        with native_convolutions():
            assert close(out, small(torch.ones(2, 16, 2, 2)))


@pytest.mark.parametrize("make,shape", [(lambda: Conv2d(1, 11, 12, padding=1, bias=False), (5, 1, 28, 28)),
                                        (lambda: ConvTranspose2d(6, 1, 12, padding=1, bias=False), (5, 6, 19, 19))],
                         ids=["conv", "transposed"])
def test_a_layer_on_data_takes_only_its_weight_gradient(make, shape, monkeypatch):
    # The encoder's first layer reads the images, which need no gradient: the swapped conv alone
    # (checked for both kinds of layer).
    monkeypatch.setattr(dense_conv, "_cpu_has_avx512", lambda: False)
    torch.manual_seed(0)
    layer, x = make(), torch.randn(shape)
    layer(x).square().sum().backward()
    grad, layer.weight.grad = layer.weight.grad, None
    with native_convolutions():
        layer(x).square().sum().backward()
    assert close(grad, layer.weight.grad)


def test_spectral_norm_iterates_once_per_forward_as_in_torch():
    torch.manual_seed(0)
    layer = spectral_norm(ConvTranspose2d(6, 1, 12, padding=1, bias=False))
    twin = copy.deepcopy(layer)
    x = torch.randn(4, 6, 19, 19)
    for _ in range(3):
        y = layer(x)
        with native_convolutions():
            y_ref = twin(x)
        assert close(y, y_ref)
    u = layer.parametrizations.weight[0]._u
    assert torch.allclose(u, twin.parametrizations.weight[0]._u, rtol=1e-6, atol=1e-7)


def test_what_must_stay_native_does():
    torch.manual_seed(0)
    layer = ConvTranspose2d(6, 1, 12, padding=1, bias=False)
    x = torch.randn(4, 6, 19, 19)
    assert not runs_natively(layer, x)
    assert runs_natively(layer, x.to(memory_format=torch.channels_last))
    assert runs_natively(layer, x.double())                       # dtype differs from the weight
    assert runs_natively(nn.ConvTranspose2d(6, 1, 12, padding=1), x)   # torch's own class
    assert runs_natively(ConvTranspose2d(6, 2, 12, padding=1, groups=2), x)
    assert runs_natively(ConvTranspose2d(6, 1, 12, padding=1, dilation=2), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert runs_natively(layer, x)
    with native_convolutions():
        assert runs_natively(layer, x)
    assert not runs_natively(layer, x)


def test_state_dicts_are_torchs_so_checkpoints_load_both_ways():
    ours = spectral_norm(Conv2d(8, 4, 3, padding=1))
    theirs = spectral_norm(nn.Conv2d(8, 4, 3, padding=1))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    plain = ConvTranspose2d(6, 1, 12, padding=1)
    plain.load_state_dict(nn.ConvTranspose2d(6, 1, 12, padding=1).state_dict())


def test_growth_gives_the_same_tree_with_and_without_the_faster_convolutions(tmp_path, monkeypatch):
    from structgen.api import train_tree
    from structgen.config import load_config

    keys = SHORT_GROWTH + [f"run.runs_dir={tmp_path}"]
    taken = []
    run = dense_conv._run
    monkeypatch.setattr(dense_conv, "_run", lambda plan, *args, **kw: taken.append(plan) or run(plan, *args, **kw))
    fast_dir, _ = train_tree(load_config(None, keys + ["run.name=fast"]), evaluate=False)
    on_this_cpu = {"transposed-direct", "own-backward"} if dense_conv._cpu_has_avx512() else {"own-backward"}
    assert set(taken) == {"small-matmul", "transposed-matmul"} | on_this_cpu
    taken.clear()
    with native_convolutions():
        plain_dir, _ = train_tree(load_config(None, keys + ["run.name=plain"]), evaluate=False)
    assert not taken
    # One step agrees to 1e-6 (below); Adam turns rounding noise in near-zero gradients into
    # full-size steps, so the first epoch drifts a little more than under grouped decoding.
    assert_same_growth(fast_dir, plain_dir, first_epoch_rel=1e-3)


def test_one_full_tree_step_gives_torchs_loss_and_gradients():
    from structgen.models.elbo import Clamps, total_loss
    from structgen.models.objective import FullTreeObjective
    from structgen.models.treevae import ModelSpec, SubTree, TreeVAE

    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm="reference"))
    while len(model.tree.leaves()) < 4:
        leaf = min(model.tree.leaves(), key=len)
        model.attach(leaf, SubTree(model, leaf))
    twin = copy.deepcopy(model)
    x = torch.rand(16, 1, 28, 28)

    def step(m):
        torch.manual_seed(5)
        loss = total_loss(FullTreeObjective(m.train(), Clamps())(x), 1.0)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in m.parameters()])

    loss, grads = step(model)
    with native_convolutions():
        loss_ref, grads_ref = step(twin)
    assert loss == pytest.approx(loss_ref.item(), rel=1e-6)
    assert (grads - grads_ref).norm() <= 1e-4 * grads_ref.norm()
