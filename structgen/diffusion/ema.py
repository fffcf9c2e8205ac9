"""An exponential moving average of a module's weights, used for sampling (algorithm.md §5.4)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """shadow ← d·shadow + (1-d)·online after each optimiser step.

    With ``warmup`` the decay is min(decay, (1+n)/(10+n)) after n updates, so the average
    forgets the random initialisation within the first few hundred steps; the reference's
    constant 0.9999 needs ~10^4 steps before the EMA is better than the start.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.shadow = copy.deepcopy(module).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        online = dict(module.named_parameters())
        shadow = [(p, online[n]) for n, p in self.shadow.named_parameters()]
        torch._foreach_lerp_([s for s, _ in shadow], [o.detach() for _, o in shadow], 1.0 - self.current_decay())
        for (_, b_s), (_, b_o) in zip(self.shadow.named_buffers(), module.named_buffers()):
            b_s.copy_(b_o)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = int(state["updates"])
