"""Parallel growth (`training.parallel_subtrees` > 1): one round splits several leaves at once.

Every sub-tree of a round trains alone, as a world of one, on worker j mod world_size, against
the frozen tree as it stood when the round began; the trained sub-trees are then gathered on
every rank and attached in the round's order. A sub-tree's initial weights, data order and
noise are seeded by its phase, so the grown tree does not depend on how many workers shared
the round. A round is the unit of resumption: a run stopped inside one trains it again whole
(sequential growth resumes at the epoch).
"""
from __future__ import annotations

import time

import torch

from structgen.runtime.progress import Progress
from structgen.train.phase import Phase, PhaseRunner


def subtree_seed(seed: int, phase_index: int) -> int:
    """The torch seed a round's sub-tree is built under, and the one set after a round (with
    the next phase's index), so that no rank's later draws depend on which sub-trees it trained."""
    return (seed * 1_000_003 + phase_index * 7_919 + 17) % 2**63


class _Recorder:
    """Stands in for the metrics log while a sub-tree trains alone: rank 0 writes its records
    once the round is gathered, with the run's epoch count as their step."""

    def __init__(self):
        self.records: list[tuple[str, bool, dict]] = []

    def write(self, event: str, step: int | None = None, **fields) -> None:
        self.records.append((event, step is not None, fields))


def train_round(trainer, phases: list[Phase]) -> list[dict]:
    """Train this rank's share of ``phases``; every rank gets every sub-tree's result, in order:
    {"phase", "state" (CPU tensors), "records", "worker", "seconds"}."""
    ctx, cfg = trainer.ctx, trainer.cfg
    alone = ctx.alone()
    quiet = Progress(enabled=False)
    mine = []
    for j, phase in enumerate(phases):
        if j % ctx.world_size != ctx.rank:
            continue
        recorder = _Recorder()
        runner = PhaseRunner(cfg.training, cfg.run, alone, trainer.model, trainer.data.train.images,
                             trainer.data.train.labels, trainer.loaders, recorder,
                             trainer.progress if ctx.is_main else quiet, checkpoint=lambda *_: None)
        torch.manual_seed(subtree_seed(cfg.run.seed, phase.index))
        state = runner.new_state(phase)
        start = time.perf_counter()
        runner.run(phase, state, on_epoch=lambda: 0)
        mine.append({"phase": j, "worker": ctx.rank, "seconds": time.perf_counter() - start,
                     "records": recorder.records,
                     "state": {k: v.detach().cpu() for k, v in state.subtree.state_dict().items()}})
    results = [r for part in ctx.all_gather_object(mine) for r in part]
    torch.manual_seed(subtree_seed(cfg.run.seed, phases[-1].index + 1))
    return sorted(results, key=lambda r: r["phase"])
