"""KL annealing (algorithm.md §2, `AnnealKLCallback`): α starts at min(1, kl_start) and grows
by decay per finished epoch; every phase owns a fresh annealer.

``per_step`` (`training.kl_anneal: step`) spreads each epoch's increment over its batches, so α
reaches the same value at every epoch's start without jumping. Off by default: on MNIST (README,
"Why the finetuning empties leaves") a per-step ramp with a learning-rate warm-up kept one more
leaf alive but gave a worse held-out ELBO and worse training-label clusters than the jumps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class KLAnnealer:
    kl_start: float
    decay: float
    epochs_done: int = 0
    per_step: bool = False

    @property
    def alpha(self) -> float:
        """α of the epoch about to run (its first batch)."""
        return self._alpha(self.epochs_done)

    def alpha_at(self, fraction: float) -> float:
        """α for the batch ``fraction`` (0 <= f < 1) of the way through the current epoch."""
        if not self.per_step:
            return self.alpha
        return self._alpha(self.epochs_done + fraction)

    def _alpha(self, epochs: float) -> float:
        return min(1.0, self.kl_start + epochs * self.decay)

    def step(self) -> None:
        self.epochs_done += 1

    def reach_one_at(self, last_epoch: int, min_decay: float = 0.0) -> None:
        """Re-aim the ramp, straight on from the α of the last epoch run (of the first, before
        any ran), rising ``min_decay`` per epoch, or faster where that would not reach α = 1 by
        epoch ``last_epoch`` (0-based). A ramp at 1 stays there."""
        anchor_epoch = max(self.epochs_done - 1, 0)
        anchor = self._alpha(anchor_epoch)
        if anchor >= 1.0:
            return
        self.decay = max(min_decay, (1.0 - anchor) / max(1, last_epoch - anchor_epoch))
        self.kl_start = anchor - anchor_epoch * self.decay

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "KLAnnealer":
        return cls(**state)          # a checkpoint from before per_step anneals per epoch, as it did


def finetune_decay(epochs: int) -> float:
    """The final finetune's decay: max(0.01, 1/max(1, E-1)) (§2)."""
    return max(0.01, 1.0 / max(1, epochs - 1))


def refit_finetune_ramp(annealer: KLAnnealer, epochs: int) -> None:
    """The finetune's ramp when its length becomes ``epochs`` while it runs: on from where α
    is, at the rate ``finetune_decay`` gives a finetune of that length, or faster where α would
    not reach 1 by its last epoch (when it was shortened). Refitted after its first epoch, it
    is the ramp of a finetune planned with ``epochs`` from the start."""
    annealer.reach_one_at(epochs - 1, min_decay=finetune_decay(epochs))
