"""Progress reporting for long stages.

Core code calls ``progress(stage, done, total, metrics)`` after each unit of work.
The CLI renders it as progress bars; the job machinery of the services turns it
into streamed events and raises :class:`common.errors.Cancelled` from it to stop
the work between units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int, metrics: dict | None = None) -> None: ...


def no_progress(stage: str, done: int, total: int, metrics: dict | None = None) -> None:
    """A progress sink that ignores everything."""


def one_step(label: str, run: Callable[[], T]) -> Callable[[Progress], T]:
    """A unit of work with no progress of its own, reported as one step (0 of 1, then 1 of 1)."""

    def work(progress: Progress) -> T:
        progress(label, 0, 1)
        result = run()
        progress(label, 1, 1)
        return result

    return work


class TqdmProgress:
    """One tqdm bar per stage, closed when the stage reaches its total."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bars: dict = {}
        self._started: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int, metrics: dict | None = None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        if metrics:
            bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in metrics.items()}, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
            del self._bars[stage]


class Stopwatch:
    """Wall-clock seconds since creation (``elapsed``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start
