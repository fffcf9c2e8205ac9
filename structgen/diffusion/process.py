"""The DDPM as a process object: a noise schedule and an ε-network, with the training loss and
the reverse process, usable without the training loop (`examples/diffusion_process.py`).

    process = DiffusionProcess(network, NoiseSchedule())
    per_sample, t = process.loss(x0, cond)              # x0 in [-1, 1], cond: a `Condition`
    x0 = process.sample(cond, make_scheduler(process.schedule, "ddim", n_steps=50), guidance=1.0, generator=g)

`DDPMTrainer` computes its loss here and `DiffusionSampler` its images, so the math has one
home; they add the loop around it (optimiser, EMA, checkpoints; modes, chunks, files).
"""
from __future__ import annotations

import torch
from torch import nn

from structgen.diffusion.conditioning import Condition, guided_eps
from structgen.diffusion.samplers import sample_loop
from structgen.diffusion.schedule import NoiseSchedule


class DiffusionProcess:
    def __init__(self, network: nn.Module, schedule: NoiseSchedule,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.network, self.schedule, self.memory_format = network, schedule, memory_format

    def loss(self, x0: torch.Tensor, cond: Condition, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-sample ε-prediction MSE (B,), timesteps (B,)): x0 noised to a uniform random t
        (or the given ``t``, ``noise``), the network asked for the noise, L2 in float32."""
        if t is None:
            t = torch.randint(0, self.schedule.T, (len(x0),), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, t, noise).contiguous(memory_format=self.memory_format)
        eps = self.network(x_t, t, cond)
        return ((eps.float() - noise) ** 2).flatten(1).mean(1), t

    @torch.no_grad()
    def sample(self, cond: Condition, scheduler, *, guidance: float = 0.0, generator: torch.Generator | None = None,
               group: int = 1, on_step=None, strength: float = 1.0) -> torch.Tensor:
        """x0 in [-1, 1], one image per condition row, from x_T ~ N(0, I) through ``scheduler``'s
        timesteps (`samplers.make_scheduler`: DDPM or DDIM). ``guidance`` is the classifier-free
        weight w (0 = the conditional model alone); ``group`` > 1 shares x_T and every step's noise
        within consecutive groups of rows (one root sample, all its leaves). ``strength`` < 1
        starts from the condition's VAE image noised to strength·(T-1) instead (SDEdit)."""
        shape = (len(cond), *cond.recon.shape[1:])
        eps_fn = lambda x, t: guided_eps(self.network, x, t, cond, guidance)  # noqa: E731
        return sample_loop(eps_fn, scheduler, shape, generator, cond.recon.device, group=group, on_step=on_step,
                           start=cond.recon, strength=strength)
