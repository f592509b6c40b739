"""The ``acme`` logger and the per-run log file.

Library code only logs to ``logging.getLogger("acme")``. For the duration of a run,
:func:`run_logging` sets the level from ``verbose``, adds a console handler when the
user has not configured logging themselves, and a file handler for the log file.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator, Optional

log = logging.getLogger("acme")

__all__ = ["log", "run_logging", "level_for"]

FORMAT = "%(asctime)s - ACME - %(levelname)s - %(message)s"


def level_for(verbose: Optional[bool]) -> int:
    """None: progress and warnings; True: also debug details; False: warnings only."""
    return {None: logging.INFO, True: logging.DEBUG, False: logging.WARNING}[verbose]


def _user_configured_logging() -> bool:
    if log.handlers:
        return True
    return log.propagate and bool(logging.getLogger().handlers)


@contextlib.contextmanager
def run_logging(verbose: Optional[bool], logfile: Optional[str]) -> Iterator[None]:
    handlers = []
    if not _user_configured_logging():
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("ACME - %(levelname)s - %(message)s"))
        handlers.append(console)
    if logfile:
        file_handler = logging.FileHandler(logfile, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        handlers.append(file_handler)
    old_level = log.level
    level = level_for(verbose)
    log.setLevel(min(level, logging.INFO) if logfile else level)
    for handler in handlers:
        if handler is not handlers[-1] or not logfile:
            handler.setLevel(level)
        log.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(old_level)
