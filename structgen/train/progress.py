"""Progress for long loops: a tqdm bar on a terminal, one plain line per epoch otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, mode: str = "auto", enabled: bool = True):
        self.enabled = enabled
        self.bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))

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
        self._bar = None
        if owner.bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit="batch")

    def update(self, images: int, postfix: dict) -> None:
        self.images += images
        if self._bar is not None:
            self._bar.set_postfix({**{k: f"{v:.3g}" for k, v in postfix.items()},
                                   "img/s": f"{self.images_per_s:.0f}"}, refresh=False)
            self._bar.update(1)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
