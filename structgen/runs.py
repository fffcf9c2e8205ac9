"""Run folders: runs/<dataset>/<YYYYmmdd-HHMMSS>-<id>/ with config.yml, checkpoints/,
metrics.jsonl, tensorboard/, figures/ and samples/ (design.md, "Runs and artefacts")."""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from structgen.errors import RunError


# Every run keeps its state in RUN/checkpoints/: last.pt, rewritten atomically at every epoch end
# (what --resume continues), and final.pt, a copy of it when the run has finished.
LAST_CHECKPOINT, FINAL_CHECKPOINT = "last.pt", "final.pt"

DDPM_PREFIX = "ddpm-"          # DDPM runs share runs/<dataset>/ with TreeVAE runs; the prefix tells them apart


# A run name becomes one folder under runs_dir/<dataset>: no separators, no "..", no leading
# dot or dash (hidden files, command-line flags), nothing a shell or a SLURM job name mangles.
RUN_NAME_RULE = "1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_name(name: str | None, what: str = "run.name") -> str | None:
    """``name`` unchanged when it is one safe path component, else a RunError with the rule."""
    if name is not None and not _RUN_NAME.fullmatch(str(name)):
        raise RunError(f"{what} = {name!r} is not a valid run name: use {RUN_NAME_RULE} (it names one folder "
                       f"under runs_dir/<dataset>)")
    return name


def default_run_name(prefix: str = "") -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:5]}"


def new_run_dir(cfg, prefix: str = "") -> Path:
    """The folder a new run will use (not created yet)."""
    root = Path(cfg.run.runs_dir) / cfg.data.dataset
    name = check_run_name(cfg.run.name) or default_run_name(prefix)
    run_dir = root / name
    if (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists():
        raise RunError(f"run folder {run_dir} already holds a run; pass --resume to continue it, or choose "
                       f"another run.name (nothing was overwritten)")
    return run_dir                  # created and claimed by run_lock.claim_run_dir before any write


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / LAST_CHECKPOINT


def final_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / FINAL_CHECKPOINT


def latest_run_dir(cfg, kind: str = "tree") -> Path:
    """The run --resume continues: run.name when set, else the newest run of ``kind`` (tree or
    ddpm, told apart by DDPM_PREFIX) with a checkpoint."""
    root = Path(cfg.run.runs_dir) / cfg.data.dataset
    if cfg.run.name:
        return root / cfg.run.name
    candidates = sorted((p.parent.parent for p in root.glob(f"*/checkpoints/{LAST_CHECKPOINT}")
                         if p.parent.parent.name.startswith(DDPM_PREFIX) == (kind == "ddpm")),
                        key=lambda p: last_checkpoint(p).stat().st_mtime)
    if not candidates:
        what = f"DDPM run ({DDPM_PREFIX}*)" if kind == "ddpm" else "TreeVAE run"
        raise RunError(f"--resume: no {what} with a checkpoint under {root}")
    return candidates[-1]


def resume_point(cfg, kind: str, *, resume=False, run_dir=None, resume_checkpoint=None,
                 new_folder: bool = False) -> tuple[Path | None, Path | None]:
    """(run folder, checkpoint to continue from) as every stage's run function takes them:
    ``resume_checkpoint`` (a launcher's restored file; its folder unless ``run_dir`` is given),
    else ``resume`` (True: the latest run of ``kind`` or run.name; a path: that folder), else
    (``run_dir``, None). Without a folder that is (None, None), or with ``new_folder`` the path
    a new run of ``kind`` will use (for launchers that must name it once for every rank)."""
    if resume_checkpoint is not None:
        checkpoint = Path(resume_checkpoint)
        return (Path(run_dir) if run_dir is not None else run_dir_of(checkpoint)), checkpoint
    if resume:
        run_dir = latest_run_dir(cfg, kind) if resume is True else Path(resume)
        if not last_checkpoint(run_dir).exists():
            raise RunError(f"--resume: {run_dir} has no checkpoint (checkpoints/last.pt) to resume from")
        return run_dir, last_checkpoint(run_dir)
    if run_dir is None and new_folder:
        return new_run_dir(cfg, DDPM_PREFIX if kind == "ddpm" else ""), None
    return (Path(run_dir) if run_dir is not None else None), None


def checkpoint_of(run_dir_or_file: str | Path) -> Path:
    """Accept a run folder or a checkpoint file."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        for checkpoint in (final_checkpoint(path), last_checkpoint(path)):
            if checkpoint.exists():
                return checkpoint
        raise RunError(f"{path}: no checkpoints/final.pt or checkpoints/last.pt in this run folder")
    if not path.exists():
        raise RunError(f"{path}: no such run folder or checkpoint")
    return path


def run_config(path: str | Path, overrides=()):
    """The resolved config.yml of the run at ``path`` (a run folder or one of its checkpoints)
    with ``overrides`` applied and checked."""
    from structgen.config import load_config
    from structgen.errors import CheckpointError

    run_dir = run_folder(path)
    if not (run_dir / "config.yml").exists():
        raise CheckpointError(f"{run_dir}: no config.yml in this run folder")
    return load_config(run_dir / "config.yml", overrides)


def run_folder(path: str | Path) -> Path:
    """The run folder of ``path``: the folder itself, or the one a checkpoint file belongs to."""
    path = Path(path)
    return path if path.is_dir() else run_dir_of(path)


def run_dir_of(checkpoint: Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
