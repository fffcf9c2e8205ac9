"""A run folder's checkpoint file in and out of Ray: one file, `LAST_CHECKPOINT`, in a Ray
checkpoint directory. Ray Train workers and Ray Tune trials both report and restore this way."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from structgen.runs import LAST_CHECKPOINT


def report_file(report: Callable, checkpoint_type, metrics: dict, path: Path | None) -> None:
    """``report(metrics, checkpoint=...)`` with a copy of the checkpoint file at ``path`` (Ray
    moves the directory into its storage); without a file, the metrics alone."""
    if path is None:
        report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, Path(tmp) / LAST_CHECKPOINT)
        report(metrics, checkpoint=checkpoint_type.from_directory(tmp))


def restore_file(checkpoint, dest: Path) -> Path | None:
    """Copy the checkpoint file out of a Ray checkpoint (None: nothing to restore) to ``dest``."""
    if checkpoint is None:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as d:
        shutil.copyfile(Path(d) / LAST_CHECKPOINT, dest)
    return dest
