"""Progress of a run: calls done and failed, rate, time left.

Where it goes depends on who is watching:

* a Jupyter notebook: tqdm's notebook bar when ``ipywidgets`` is installed, else
  one line of text that updates in place (an IPython display);
* a terminal (stderr is a TTY and ``CI`` is not set): tqdm's bar when tqdm is
  installed, else one self-rewriting line;
* nobody (stderr is a file or a pipe, or ``CI`` is set): a log line on the ``acme``
  logger (the console and the run's log file) at every tenth of the calls and at
  most once a minute in between, never a flood.

Hidden altogether with ``verbose=False`` or ``ACME_NO_PROGRESS=1``. The log file
also gets the log lines when a bar is shown.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from typing import Optional

from .logs import FILE_ONLY

log = logging.getLogger(__name__)

__all__ = ["Progress", "env_flag", "progress_mode"]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")

#: Seconds between two log lines while the calls are slow (between tenths).
LOG_EVERY_SECONDS = 60.0

_warned: set = set()


def env_flag(name: str) -> bool:
    """The boolean environment variable ``name``: ``1``/``true``/``yes``/``on`` is
    True, ``0``/``false``/``no``/``off`` or unset is False (any case, blanks
    ignored). Any other value counts as True (it was set) with a warning, once."""
    value = os.environ.get(name, "").strip().lower()
    if value in FALSE_WORDS:
        return False
    if value not in TRUE_WORDS and name not in _warned:
        _warned.add(name)
        log.warning("%s=%r is not one of %s (true) or %s (false); taken as true", name,
                    os.environ.get(name), "/".join(TRUE_WORDS), "/".join(FALSE_WORDS[1:]))
    return True


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (not a plain IPython terminal)."""
    shell_module = sys.modules.get("IPython")
    if shell_module is None or "ipykernel" not in sys.modules:
        return False
    shell = shell_module.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _on_terminal() -> bool:
    stream = sys.stderr
    try:
        return bool(stream) and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_mode(verbose: Optional[bool]) -> str:
    """How progress is shown: ``"off"``, ``"notebook"``, ``"terminal"`` or ``"log"``."""
    if verbose is False or env_flag("ACME_NO_PROGRESS"):
        return "off"
    if _in_notebook():
        return "notebook"
    if _on_terminal() and not env_flag("CI"):
        return "terminal"
    return "log"


class _Line:
    """One line that is redrawn: ``\\r`` on a terminal, an updated display in a
    notebook."""

    def __init__(self, notebook: bool):
        self.handle = None
        if notebook:  # raw text/plain: shown as it is, not as a quoted repr
            from IPython.display import display
            self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def draw(self, text: str) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        else:
            sys.stderr.write("\r" + text)
            sys.stderr.flush()

    def end(self) -> None:
        if self.handle is None:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _columns() -> int:
    """Width of the terminal on stderr, 0 when it reports none."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return 0
    return size.columns if size.lines > 0 else 0


def _make_bar(mode: str, total: int, label: str, already_done: int):
    """tqdm's bar for ``mode``, or None when it is not installed (or, in a notebook,
    ``ipywidgets`` is missing)."""
    try:
        if mode == "notebook":
            if importlib.util.find_spec("ipywidgets") is None:
                return None
            from tqdm.notebook import tqdm
            width: dict = {}
        else:
            from tqdm import tqdm
            # tqdm draws nothing on a terminal that reports no size (some ptys)
            width = {"dynamic_ncols": True} if _columns() > 0 else {"ncols": 100,
                                                                    "nrows": 24}
        return tqdm(total=total, initial=already_done, desc=label, unit="call",
                    leave=True, **width)
    except ImportError:  # tqdm missing, or its notebook bar cannot be drawn
        return None


class Progress:
    """``update(done, failed)`` as results arrive; ``close()`` at the end.

    Parameters
    ----------
    total : int
        Calls of the map (including those done before a resume).
    label : str
        Shown in front of the counts (the function's name).
    verbose : bool or None
        ``False`` hides progress.
    already_done : int
        Calls that had results before this run started (resume).
    """

    def __init__(self, total: int, label: str, verbose: Optional[bool],
                 already_done: int = 0):
        self.total = total
        self.label = label
        self.mode = progress_mode(verbose) if total > 0 else "off"
        self.enabled = self.mode != "off"
        self.done = already_done
        self.already_done = already_done
        self.failed = 0
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_logged = (self.start, self._tenth())
        self.bar = self.line = None
        self.closed = False
        if self.mode in ("terminal", "notebook"):
            self.bar = _make_bar(self.mode, total, label, already_done)
            if self.bar is None:
                self.line = _Line(self.mode == "notebook")

    def _tenth(self) -> int:
        return (self.done + self.failed) * 10 // max(self.total, 1)

    def update(self, done: int, failed: int = 0) -> None:
        """``done`` more calls have results, ``failed`` more failed."""
        if not self.enabled or not (done or failed):
            return
        self.done += done
        self.failed += failed
        now = time.monotonic()
        self._maybe_log(now)
        if self.bar is not None:
            self.bar.update(done + failed)
            if self.failed:
                self.bar.set_postfix(failed=self.failed, refresh=False)
        elif self.line is not None and (now - self.last_draw >= 0.2
                                        or self.done + self.failed >= self.total):
            self.last_draw = now
            self.line.draw(self.text(now))

    def _maybe_log(self, now: float) -> None:
        """A log line at each tenth of the calls, and once a minute in between."""
        last_time, last_tenth = self.last_logged
        tenth = self._tenth()
        finished = self.done + self.failed >= self.total
        if finished or not (tenth > last_tenth or now - last_time >= LOG_EVERY_SECONDS):
            return  # the last line is written by close()
        self.last_logged = (now, tenth)
        self._log(self.text(now))

    def _log(self, text: str) -> None:
        # with a bar on screen, the line goes to the run's log file only
        extra = None if self.mode == "log" else FILE_ONLY
        log.info("progress: %s", text, extra=extra)

    def text(self, now: float) -> str:
        """``f: 30/60 calls (50%), 3 failed, 12.1 calls/s, about 3 s left``."""
        finished = self.done + self.failed
        elapsed = max(now - self.start, 1e-9)
        rate = (finished - self.already_done) / elapsed
        left = (self.total - finished) / rate if rate > 0 else None
        eta = f"about {left:.0f} s left" if left is not None else "? s left"
        if finished >= self.total:
            eta = f"done in {elapsed:.1f} s"
        percent = 100 * finished // max(self.total, 1)
        return (f"{self.label}: {finished}/{self.total} calls ({percent}%), "
                f"{self.failed} failed, {rate:.1f} calls/s, {eta}")

    def close(self) -> None:
        """Draw the last state and end the bar (also after an interruption)."""
        if not self.enabled or self.closed:
            return
        self.closed = True
        now = time.monotonic()
        finished = self.done + self.failed
        elapsed = now - self.start
        summary = (f"{self.label}: {finished}/{self.total} calls, {self.failed} failed, "
                   f"in {elapsed:.1f} s" + ("" if finished >= self.total
                                             else " (stopped before the end)"))
        if finished > self.already_done:  # an interruption before any call is told
            self._log(summary)                # by the runner
        if self.bar is not None:
            self.bar.close()
        elif self.line is not None:
            self.line.draw(self.text(now))
            self.line.end()
