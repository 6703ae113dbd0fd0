"""The overall progress line of a pipeline phase."""
from __future__ import annotations

import time


class Progress:
    """Item k of n, what is happening, elapsed time and ETA for the phase.

    The ETA is the mean time of the finished items times the items left (the phases: preparing candidates, which
    is fusing and scoring, then detector runs, which dominate on CPU, then robustness cells).
    """

    def __init__(self, unit: str, total: int):
        self.unit, self.total, self.done, self.start = unit, total, 0, time.time()

    def stage(self, k: int, name: str, stage: str) -> None:
        elapsed = time.time() - self.start
        eta = "?" if self.done == 0 else f"{elapsed / self.done * (self.total - self.done):.0f}s"
        print(f"[{self.unit} {k}/{self.total}] {name}: {stage}  (elapsed {elapsed:.0f}s, ETA {eta})", flush=True)

    def finished(self) -> None:
        self.done += 1
