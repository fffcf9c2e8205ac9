"""The exp/log softplus and summed BCE against torch's own, values and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from structgen.models.likelihood import leaf_nll
from structgen.nn.vector_math import bce_with_logits_summed, softplus

# Logits across the range a decoder produces, plus saturated ones where a naive form overflows.
EXTREMES = torch.tensor([-200.0, -90.0, -30.0, -20.5, -1.0, -1e-4, 0.0, 1e-4, 1.0, 19.5, 20.5, 30.0, 90.0, 200.0])


def test_softplus_matches_torch_in_value_and_gradient():
    torch.manual_seed(0)
    z = torch.cat([torch.randn(4096) * 6, EXTREMES]).requires_grad_()
    ours = softplus(z)
    theirs = F.softplus(z.detach().clone().requires_grad_())
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=2e-7)
    grad = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, z, grad)
    ref = z.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(F.softplus(ref), ref, grad)
    assert torch.allclose(ours_grad, ref_grad, rtol=1e-6, atol=1e-7)


def test_softplus_of_half_precision_runs_in_float32():
    z = torch.randn(64, dtype=torch.bfloat16, requires_grad=True)
    out = softplus(z)
    assert out.dtype == torch.float32
    assert torch.allclose(out, F.softplus(z.detach().float()), rtol=1e-6, atol=1e-7)
    out.sum().backward()
    assert z.grad.dtype == torch.bfloat16


def _reference_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    per_pixel = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    return per_pixel.flatten(2).sum(2)


def test_summed_bce_matches_torch_with_the_image_broadcast_over_leaves():
    torch.manual_seed(1)
    logits = (torch.randn(8, 5, 1, 28, 28) * 8).requires_grad_()
    logits.data[0, 0, 0, 0, : len(EXTREMES)] = EXTREMES
    target = torch.rand(8, 1, 1, 28, 28).requires_grad_()
    ours = bce_with_logits_summed(logits, target, pixel_dims=3)
    ref_logits, ref_target = logits.detach().clone().requires_grad_(), target.detach().clone().requires_grad_()
    theirs = _reference_bce(ref_logits, ref_target)
    assert ours.shape == (8, 5)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-3)       # sums of 784 terms of up to ~200
    weights = torch.randn(8, 5)
    ours_grads = torch.autograd.grad(ours, (logits, target), weights)
    theirs_grads = torch.autograd.grad(theirs, (ref_logits, ref_target), weights)
    for mine, ref in zip(ours_grads, theirs_grads):
        assert mine.shape == ref.shape
        assert torch.allclose(mine, ref, rtol=1e-5, atol=1e-5)


def test_summed_bce_refuses_a_target_without_the_leaf_axis():
    with pytest.raises(ValueError, match="dimensions"):
        bce_with_logits_summed(torch.zeros(2, 3, 1, 4, 4), torch.zeros(2, 1, 4, 4), pixel_dims=3)


@pytest.mark.parametrize("kind", ["sigmoid", "mse"])
def test_leaf_nll_scores_every_leaf_against_its_image(kind):
    torch.manual_seed(2)
    out = torch.randn(3, 4, 1, 6, 6)
    x = torch.rand(3, 1, 6, 6)
    got = leaf_nll(out, x, kind)
    for leaf in range(4):
        if kind == "sigmoid":
            expected = F.binary_cross_entropy_with_logits(out[:, leaf], x, reduction="none").flatten(1).sum(1)
        else:
            expected = ((out[:, leaf] - x) ** 2).flatten(1).sum(1)
        assert torch.allclose(got[:, leaf], expected, rtol=1e-5, atol=1e-5)


def test_leaf_nll_names_mismatched_shapes_and_unknown_likelihoods():
    with pytest.raises(ValueError, match="does not hold images"):
        leaf_nll(torch.zeros(2, 3, 1, 6, 6), torch.zeros(2, 1, 5, 5), "sigmoid")
    with pytest.raises(ValueError, match="unknown likelihood"):
        leaf_nll(torch.zeros(2, 3, 1, 6, 6), torch.zeros(2, 1, 6, 6), "poisson")
