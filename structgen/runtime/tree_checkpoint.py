"""TreeVAE checkpoints: the growth schedule's state, the model's `to_state()`, RNG and config in one
file (`runtime.checkpoint_io` writes and reads it), under their own format string."""
from __future__ import annotations

from pathlib import Path

from structgen.errors import CheckpointError
from structgen.models.treevae import TreeVAE
from structgen.runs import checkpoint_of
from structgen.runtime.checkpoint_io import read_checkpoint, upgrade_v1

FORMAT = "structgen.treevae-checkpoint/2"
FORMAT_V1 = "structgen.treevae-checkpoint/1"


def load_checkpoint(path: Path) -> dict:
    """A TreeVAE checkpoint (format /2; /1 converted on load)."""
    return read_checkpoint(path, kind="TreeVAE", current=FORMAT,
                           upgrades={FORMAT_V1: lambda state: upgrade_v1(state, FORMAT)})


def load_model(path: str | Path, device="cpu"):
    """(TreeVAE in eval mode on ``device``, its checkpoint) from a run folder or checkpoint file:
    topology first, then the weights, strictly."""
    ckpt_path = checkpoint_of(path)
    state = load_checkpoint(ckpt_path)
    try:
        model = TreeVAE.from_state(state)
    except (TypeError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{ckpt_path}: incompatible checkpoint: {err}") from None
    return model.to(device).eval(), state
