"""DDPM checkpoints: one file with the network (spec + weights), EMA, optimiser, LR schedule,
step / epoch / position in the epoch, RNG, config and the frozen TreeVAE it was trained on.

Written with the TreeVAE's atomic writer under its own format string, so neither kind of
checkpoint can be mistaken for the other, and read by the same `read_checkpoint`
(weights_only=True: a checkpoint never runs code). Format /1 files are converted on load.
"""
from __future__ import annotations

from pathlib import Path

from structgen.runs import checkpoint_of
from structgen.runtime.checkpoint_io import read_checkpoint, save_checkpoint, upgrade_v1

FORMAT = "structgen.ddpm-checkpoint/2"
FORMAT_V1 = "structgen.ddpm-checkpoint/1"


def save(state: dict, path: Path) -> Path:
    return save_checkpoint({**state, "format": FORMAT}, path)


def _hint(found) -> str:
    return " (a TreeVAE run: pass it to train-ddpm --vae)" if str(found).startswith("structgen.treevae") else ""


def load(path: str | Path) -> dict:
    return read_checkpoint(checkpoint_of(path), kind="DDPM", current=FORMAT,
                           upgrades={FORMAT_V1: lambda state: upgrade_v1(state, FORMAT)}, hint=_hint)
