"""The ``acme`` logger and the per-run log file.

Library code only logs to ``logging.getLogger("acme")``. For the duration of a run,
:func:`run_logging` sets the level from ``verbose``, adds a console handler when the
user has not configured logging themselves, and a file handler for the log file.
Records logged with ``extra=FILE_ONLY`` (the run's full parameter list, tracebacks)
go to the log file but not to the console.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Iterator, Optional

log = logging.getLogger("acme")

__all__ = ["log", "run_logging", "level_for", "FILE_ONLY"]

FILE_ONLY = {"acme_file_only": True}


class _LogFile(logging.FileHandler):
    """A log file opened without following a symbolic link at its name: anyone who
    can write the output folder could otherwise make the log append to any file
    of the user's."""

    def _open(self):
        try:
            fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(exc.errno, "refusing to write the log through a symbolic "
                              "link", self.baseFilename) from None
            raise
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def level_for(verbose: Optional[bool]) -> int:
    """None: progress and warnings; True: also debug details; False: warnings only."""
    return {None: logging.INFO, True: logging.DEBUG, False: logging.WARNING}[verbose]


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "acme_file_only", False)


def _user_configured_logging() -> bool:
    if log.handlers:
        return True
    return log.propagate and bool(logging.getLogger().handlers)


@contextlib.contextmanager
def run_logging(verbose: Optional[bool], logfile: Optional[str]) -> Iterator[None]:
    """Console and log-file output for one run; restores the logger afterwards."""
    console_level = level_for(verbose)
    handlers = []
    if not _user_configured_logging():
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("ACME - %(levelname)s - %(message)s"))
        console.setLevel(console_level)
        console.addFilter(_not_file_only)
        handlers.append(console)
    file_level = logging.DEBUG if verbose else logging.INFO
    if logfile:
        file_handler = _LogFile(logfile, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(
            "%(asctime)s - ACME - %(levelname)s - %(message)s"))
        file_handler.setLevel(file_level)
        handlers.append(file_handler)
    old_level = log.level
    log.setLevel(min(console_level, file_level) if logfile else console_level)
    for handler in handlers:
        log.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            try:
                handler.close()
            except OSError:  # a full disk must not hide the run's own outcome
                pass
        log.setLevel(old_level)
