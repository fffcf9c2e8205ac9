"""The training phases' Adam (`structgen.train.optimizer`): fused where it can be, the same
updates as torch's default Adam."""
from __future__ import annotations

import copy

import torch

from structgen.models.elbo import Clamps, total_loss
from structgen.models.objective import FullTreeObjective
from structgen.models.treevae import ModelSpec, SubTree, TreeVAE
from structgen.train.optimizer import adam


def test_fused_adam_trains_a_tree_as_torchs_default_adam(one_torch_thread):
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28), spectral_norm="reference"))
    model.attach("r0", SubTree(model, "r0"))
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    ours, plain = adam(model.parameters(), lr=1e-3, weight_decay=1e-5), torch.optim.Adam(
        twin.parameters(), lr=1e-3, weight_decay=1e-5)
    assert ours.defaults["fused"] and not plain.defaults["fused"]
    x = torch.rand(32, 1, 28, 28)
    for step in range(3):
        torch.manual_seed(step)
        loss = total_loss(FullTreeObjective(model, Clamps())(x), 0.5)
        ours.zero_grad()
        loss.backward()
        # The same gradients for both, so that only the two updates differ: computed on each copy,
        # the copies' rounding in the forward and backward would flip the sign of a near-zero
        # gradient, and Adam turns that into a full lr-sized step (seen: 1 of 9,216 weights).
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        ours.step()
        plain.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=f"{name} after three steps")
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), start.parameters()))
    assert moved > 1e-3                                 # the steps did update the weights


def test_adam_keeps_torchs_default_where_no_fused_kernel_exists():
    on_meta = torch.nn.Linear(3, 2, device="meta")
    assert not adam(on_meta.parameters(), lr=1e-3).defaults["fused"]
    assert adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3).defaults["fused"]
