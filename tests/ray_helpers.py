"""Worker functions for the Ray tests (importable by Ray workers, which unpickle by module)."""
from __future__ import annotations

from pathlib import Path

import torch

from structgen.models import gaussian as G


class GlobalNoise:
    """Replaces the reparameterisation noise: every call draws the noise of the GLOBAL batch
    from a counter-seeded generator and returns this rank's slice, so 1 worker on the global
    batch and W workers on its shards draw identical noise for every sample."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.calls = rank, world, 0

    def __call__(self, mu, var, generator=None):
        self.calls += 1
        g = torch.Generator().manual_seed(1000 + self.calls)
        b = mu.shape[0]
        noise = torch.randn((b * self.world, *mu.shape[1:]), generator=g)[self.rank * b:(self.rank + 1) * b]
        return mu + noise.to(mu.device) * torch.sqrt(var + G.EPS)


def unet_step(rank: int, world: int, ctx=None, lr: float = 0.1) -> dict:
    """One SGD step of the diffusion UNet (with a leaf-signal embedding) on this rank's shard."""
    import torch.nn.functional as F

    from structgen.diffusion.unet import UNet, UNetSpec

    torch.manual_seed(0)
    unet = UNet(UNetSpec((1, 28, 28), dim=16, dim_mults=[1, 2, 2], n_residual=1, attn_resolutions=[7], dropout=0.0,
                         n_heads=4))
    torch.nn.init.normal_(unet.out[-1].weight, std=0.05)   # zero-initialised output would block every other gradient
    g = torch.Generator().manual_seed(3)
    x_t, recon, noise = (torch.randn(8, 1, 28, 28, generator=g) for _ in range(3))
    t = torch.randint(0, 1000, (8,), generator=g)
    signal = torch.randn(8, 64, generator=g)
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    trained = ctx.wrap(unet) if ctx is not None else unet
    opt = torch.optim.SGD(unet.parameters(), lr=lr)
    loss = F.mse_loss(trained(x_t[part], t[part], recon[part], signal[part]), noise[part])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def one_step(kind: str, rank: int, world: int, ctx=None, lr: float = 0.1, device: str = "cpu") -> dict:
    """One optimiser step of the full tree, a sub-tree or the UNet on this rank's shard of a fixed batch
    (the tree's on ``device``: benchmarks/gpu_check.py runs it on a GPU)."""
    if kind == "unet":
        return unet_step(rank, world, ctx, lr)
    real_sample = G.sample
    try:
        return tree_step(kind, rank, world, ctx, lr, torch.device(device))
    finally:
        G.sample = real_sample           # the replacement must not leak into other tests


def tree_step(kind: str, rank: int, world: int, ctx, lr: float, device: torch.device) -> dict:
    from structgen.models.elbo import Clamps, total_loss
    from structgen.models.objective import FullTreeObjective, SubTreeObjective
    from structgen.models.treevae import ModelSpec, SubTree, TreeVAE

    G.sample = GlobalNoise(rank, world)
    torch.manual_seed(0)
    model = TreeVAE(ModelSpec((1, 28, 28)))
    model.attach("r0", SubTree(model, "r0"))
    model.to(device)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(7)).to(device)
    shard = x[rank * 16 // world:(rank + 1) * 16 // world]
    if kind == "full":
        objective, params = FullTreeObjective(model, Clamps()), model.parameters()
        model.train()
    else:
        sub = SubTree(model, "r01").to(device)
        objective, params = SubTreeObjective(model, sub, Clamps()), sub.parameters()
        model.eval()
    trained = ctx.wrap(objective) if ctx is not None else objective
    # SGD: the update is linear in the gradient. (Adam's first step is lr·sign(g), which turns
    # float-rounding differences of near-zero gradients into full-size steps.)
    opt = torch.optim.SGD(params, lr=lr)
    loss = total_loss(trained(shard), 1.0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: v.detach().clone() for k, v in objective.state_dict().items()}


def equivalence_worker(config: dict) -> None:
    import ray.train

    from structgen.launch.ray_train import ray_context
    from structgen.stages import STAGES

    for kind in config["kinds"]:          # one worker group for every kind: its start-up is the cost
        ctx = ray_context(Path(config["out"]), STAGES["ddpm" if kind == "unet" else "tree"])
        state = one_step(kind, ctx.rank, ctx.world_size, ctx)
        if ctx.rank == 0:
            torch.save(state, Path(config["out"]) / f"{kind}.pt")
    ray.train.report({"done": 1})
