"""Progress of a long step (feature extraction, validation, the multi-view test, segmentation,
transcoding, the dataset doctor), on rank 0 only.

On a terminal: a tqdm bar (when tqdm is installed). Otherwise (Slurm logs, CI, pipes): an INFO line
every `log_every_s` seconds with count, rate and ETA, and one at the end. The cost per step is a
counter and a clock read.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts units of a long step and reports them (see the module docstring).

    Args:
        total: units expected (None when unknown: no percentage or ETA).
        desc: what the step is, e.g. "kNN features (val)".
        unit: the unit's name, e.g. "clips", "videos", "batches".
        log_every_s: seconds between INFO lines when not on a terminal.
        enabled: report at all (default: rank 0 of the default process group only).
        tty: force the terminal (True) or log-line (False) mode; default: stderr is a terminal.
    """

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", log_every_s: float = 30.0,
                 enabled: Optional[bool] = None, tty: Optional[bool] = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.log_every_s = log_every_s
        self.count = 0
        self.enabled = _is_rank0() if enabled is None else enabled
        self._start = self._last = time.monotonic()
        self._bar = None
        if self.enabled and (sys.stderr.isatty() if tty is None else tty):
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        """Add `n` finished units."""
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.log_every_s:
            self._last = now
            logger.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """'desc: 120/500 clips (24%), 3.2 clips/s, elapsed 0:37, ETA 1:58'."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.count}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100.0 * self.count / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {_duration((self.total - self.count) / rate)}"
        return text

    def close(self) -> None:
        """Finish: close the bar, or log the final line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            logger.info("%s (done)", self.line())
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], total: Optional[int] = None, desc: str = "", unit: str = "it",
          log_every_s: float = 30.0, enabled: Optional[bool] = None) -> Iterator[T]:
    """Iterate `items`, reporting progress with one `Progress` (total from len() when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    progress = Progress(total, desc, unit=unit, log_every_s=log_every_s, enabled=enabled)
    try:
        for item in items:
            yield item
            progress.update()
    finally:
        progress.close()
