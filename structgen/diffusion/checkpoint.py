"""DDPM checkpoints: one file with the network (spec + weights), EMA, optimiser, LR schedule,
step / epoch / position in the epoch, RNG, config and the frozen TreeVAE it was trained on.

Written with the TreeVAE's atomic writer under its own format string, so neither kind of
checkpoint can be mistaken for the other.
"""
from __future__ import annotations

from pathlib import Path

import torch

from structgen.runs import checkpoint_of
from structgen.train.checkpoint import CheckpointError, save_checkpoint

FORMAT = "structgen.ddpm-checkpoint/1"


def save(state: dict, path: Path) -> Path:
    return save_checkpoint({**state, "format": FORMAT}, path)


def load(path: str | Path) -> dict:
    path = checkpoint_of(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != FORMAT:
        hint = " (a TreeVAE run: pass it to train-ddpm --vae)" if str(found).startswith("structgen.treevae") else ""
        raise CheckpointError(f"{path}: not a structgen DDPM checkpoint (format {found!r}, expected {FORMAT!r}){hint}")
    return state
