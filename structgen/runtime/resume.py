"""Whether a run may continue from a checkpoint with the config it is resumed with.

Each stage names the keys a resumed run may change (``free``: where files live, threads,
precision, how long to train ...) and the sections it checks; any other difference is refused
before any work, naming the keys and both values.
"""
from __future__ import annotations

from pathlib import Path

from structgen.config import Config, config_to_dict
from structgen.config.load import upgrade_channel_lists
from structgen.errors import CheckpointError

# Where a run lives and how its steps are computed: any stage's resume may change these.
RUN_FREE = ("run.name", "run.device", "run.threads", "run.precision", "run.channels_last", "run.progress",
            "run.runs_dir", "data.data_dir", "data.ffcv_dir")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resumable(saved: dict, cfg: Config, where: Path, *, free: tuple, checked: tuple = ("",)) -> None:
    """Refuse to resume the checkpoint at ``where`` (config ``saved``) with a ``cfg`` that differs
    in a ``checked`` key other than the ``free`` ones (prefixes of dotted keys)."""
    saved = {**saved, "model": upgrade_channel_lists(saved.get("model", {}), str(where))}   # pre-`levels` lists
    # A key added after the checkpoint was written compares as its schema default.
    now, then, default = _flat(config_to_dict(cfg)), _flat(saved), _flat(config_to_dict(Config()))
    diff = [k for k in sorted(set(now) | set(then)) if k.startswith(checked) and not k.startswith(free)
            and now.get(k) != then.get(k, default.get(k))]
    if diff:
        detail = "; ".join(f"{k}: checkpoint {then.get(k)!r} vs now {now.get(k)!r}" for k in diff[:6])
        raise CheckpointError(f"{where}: cannot resume, the config differs from the checkpoint's in {detail}. "
                              f"Resume with the run's own config ({where.parent.parent / 'config.yml'}) or start a new run.")
