"""Progress for long loops: a tqdm bar on a terminal; otherwise plain lines: one per epoch
(written by the loops) and, inside an epoch that runs longer, one every `heartbeat_s` seconds,
so a log file or a `ray job logs` stream never goes quiet for a whole long epoch."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, mode: str = "auto", enabled: bool = True, heartbeat_s: float = 60.0):
        self.enabled = enabled
        self.bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.heartbeat_s = heartbeat_s

    def epoch(self, total_batches: int, desc: str):
        return _EpochProgress(self, total_batches, desc)

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr if self.bar else sys.stdout, flush=True)


class _EpochProgress:
    def __init__(self, owner: Progress, total: int, desc: str):
        self.owner, self.total, self.desc = owner, total, desc
        self.start = time.perf_counter()
        self.images = 0
        self.done = 0
        self._next_line = self.start + owner.heartbeat_s
        self._bar = None
        if owner.bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="batch")

    def update(self, images: int, postfix: dict) -> None:
        self.images += images
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix({**{k: f"{v:.3g}" for k, v in postfix.items()},
                                   "img/s": f"{self.images_per_s:.0f}"}, refresh=False)
            self._bar.update(1)
        elif self.owner.enabled and time.perf_counter() >= self._next_line:
            self._next_line = time.perf_counter() + self.owner.heartbeat_s
            values = [f"{k} {v:.4g}" for k, v in postfix.items()]
            if self.images:
                values.append(f"{self.images_per_s:.0f} img/s")
            self.owner.line("  ".join([f"  {self.desc}: {self.done}/{self.total}", *values]))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
