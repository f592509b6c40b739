"""Progress of a run on the terminal: calls done and failed, rate, time left.

Shown only when stderr is a terminal, ``verbose`` is not False and ``CI`` is not
set, so logs of batch jobs and CI stay clean. Uses tqdm when it is installed, a
single self-rewriting line otherwise.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

__all__ = ["Progress"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _wanted(verbose: Optional[bool]) -> bool:
    if verbose is False or _flag("CI") or _flag("ACME_NO_PROGRESS"):
        return False
    stream = sys.stderr
    return bool(stream) and hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """``update(done, failed)`` as results arrive; ``close()`` at the end."""

    def __init__(self, total: int, label: str, verbose: Optional[bool],
                 already_done: int = 0):
        self.total = total
        self.label = label
        self.enabled = _wanted(verbose) and total > 0
        self.done = already_done
        self.failed = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.bar = None
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, initial=already_done, desc=label, unit="call",
                            dynamic_ncols=True, leave=True)

    def update(self, done: int, failed: int = 0) -> None:
        if not self.enabled or not (done or failed):
            return
        self.done += done
        self.failed += failed
        if self.bar is not None:
            self.bar.update(done + failed)
            if self.failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_draw >= 0.2 or self.done + self.failed >= self.total:
            self.last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        finished = self.done + self.failed
        elapsed = max(now - self.start, 1e-9)
        rate = finished / elapsed
        left = (self.total - finished) / rate if rate > 0 else float("inf")
        eta = f"{left:5.0f} s left" if left != float("inf") else "  ? s left"
        line = (f"\r{self.label}: {finished}/{self.total} calls "
                f"({self.failed} failed), {rate:7.1f} calls/s, {eta}")
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()
