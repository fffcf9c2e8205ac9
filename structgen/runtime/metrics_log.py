"""metrics.jsonl (one JSON object per line) plus TensorBoard scalars, written by rank 0.

On resume the log is cut back to the number of lines the checkpoint saw, so a re-run epoch
is never logged twice.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb_dir = Path(run_dir) / "tensorboard"
        self._tb = None
        self._want_tb = tensorboard and enabled
        self.lines = self._count_lines()

    def _count_lines(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open() as fh:
            return sum(1 for _ in fh)

    def truncate(self, lines: int) -> None:
        """Keep the first ``lines`` records (resume: drop what the checkpoint did not see)."""
        if not self.enabled or not self.path.exists():
            return
        kept = self.path.read_text().splitlines(keepends=True)[:lines]
        self.path.write_text("".join(kept))
        self.lines = len(kept)

    def write(self, event: str, step: int | None = None, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **{k: _clean(v) for k, v in fields.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.lines += 1
        if step is not None:
            self.scalars(event, step, fields)

    def scalars(self, prefix: str, step: int, fields: dict) -> None:
        if not self._want_tb:
            return
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; tolerate a trimmed install
                self._want_tb = False
                return
            self._tb = SummaryWriter(str(self._tb_dir))
        phase = fields.get("phase", "")
        for key, value in fields.items():
            tag = f"{prefix}/{key}" if not phase else f"{prefix}/{phase}/{key}"
            # one level of nesting becomes one curve per entry (leaf_mass: a curve per leaf)
            for name, number in (value.items() if isinstance(value, dict) else [("", value)]):
                if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
                    self._tb.add_scalar(f"{tag}/{name}" if name else tag, number, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # A run that fails must still close its TensorBoard writer: the writer's thread would
    # otherwise outlive the run in the caller's process (a notebook, the test session).
    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
