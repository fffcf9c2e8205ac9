"""KL annealing (algorithm.md §2, `AnnealKLCallback`): α starts at min(1, kl_start) and grows
by decay per finished epoch; every phase owns a fresh annealer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KLAnnealer:
    kl_start: float
    decay: float
    epochs_done: int = 0

    @property
    def alpha(self) -> float:
        return min(1.0, self.kl_start + self.epochs_done * self.decay)

    def step(self) -> None:
        self.epochs_done += 1

    def state_dict(self) -> dict:
        return {"kl_start": self.kl_start, "decay": self.decay, "epochs_done": self.epochs_done}

    @classmethod
    def from_state(cls, state: dict) -> "KLAnnealer":
        return cls(**state)


def finetune_decay(epochs: int) -> float:
    """The final finetune's decay: max(0.01, 1/max(1, E-1)) (§2)."""
    return max(0.01, 1.0 / max(1, epochs - 1))
