"""Checks of ParallelMap's parameters: wrong types raise TypeError, wrong values
ValueError, each naming the parameter and what was expected."""
from __future__ import annotations

import datetime
import errno
import logging
import numbers
import os
import re
import shutil
import stat
import time
from typing import Any, Optional, Union

log = logging.getLogger(__name__)

__all__ = ["check_bool", "check_auto_or_int", "check_optional_bool", "check_choice",
           "check_positive_number", "check_path", "check_logfile", "parse_memory",
           "check_threshold_days", "check_creatable_folder", "cleanup_old_folders",
           "PathParameterError"]


class PathParameterError(ValueError, OSError):
    """A path parameter names something unusable (e.g. a directory where a file is
    needed). Both a ValueError and an OSError (esi-acme raised IOError here)."""


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` has to be True or False, not {_show(value)}")
    return value


def check_optional_bool(value: Any, name: str) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"`{name}` has to be None, True or False, not {_show(value)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_auto_or_int(value: Any, name: str, minimum: int = 1) -> Union[str, int]:
    """``"auto"`` or an integer ``>= minimum``."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"`{name}` has to be 'auto' or an integer >= {minimum}, "
                             f"not the string {value!r}")
        return value
    if isinstance(value, numbers.Real) and not _is_int(value) \
            and not isinstance(value, bool):
        # a number that is not an integer: a ValueError, as in esi-acme (which also
        # takes a whole float such as 4.0 for 4; acme does not guess)
        raise ValueError(f"`{name}` has to be 'auto' or an integer >= {minimum}, "
                         f"not {type(value).__name__} {value!r}")
    if not _is_int(value):
        raise TypeError(f"`{name}` has to be 'auto' or an integer >= {minimum}, "
                        f"not {_show(value)}")
    if value < minimum:
        raise ValueError(f"`{name}` has to be 'auto' or an integer >= {minimum}, "
                         f"not {value}")
    return int(value)


def check_auto_or_bool(value: Any, name: str) -> Union[str, bool]:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"`{name}` has to be 'auto', True or False, not {value!r}")
        return value
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` has to be 'auto', True or False, not {_show(value)}")
    return value


def check_choice(value: Any, name: str, choices: list[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` has to be one of {choices}, not {_show(value)}")
    if value not in choices:
        raise ValueError(f"`{name}` has to be one of {choices}, not {value!r}")
    return value


def check_positive_number(value: Any, name: str, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    expected = "a number of seconds > 0" + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` has to be {expected}, not {_show(value)}")
    if not value > 0 or value != value:
        raise ValueError(f"`{name}` has to be {expected}, not {value!r}")
    return float(value)


def check_path(value: Any, name: str) -> Optional[str]:
    """None or a str/PathLike; returned as a str, with ``~`` expanded."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"`{name}` has to be None or a path (str), not {_show(value)}")
    path = os.fspath(value)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path.strip():
        raise ValueError(f"`{name}` has to be a non-empty path, not {value!r}")
    if "\x00" in path:
        raise ValueError(f"`{name}` has to be a path without NUL characters, not {value!r}")
    return os.path.expanduser(path)


def check_logfile(value: Any) -> Union[None, bool, str]:
    if value is None or isinstance(value, bool):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError("`logfile` has to be None, True, False or a file name, "
                        f"not {_show(value)}")
    path = check_path(value, "logfile")
    if os.path.isdir(path):
        raise PathParameterError(f"`logfile` has to be a file name, but {path!r} is "
                                 "a directory")
    return path


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
# SLURM's units: K, M, G, T are powers of 1024 ("4G" is 4096 MB); so are KB, MB, GB, TB here.
_UNIT_MB = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 ** 2}


def parse_memory(value: Any, name: str = "mem_per_worker") -> Union[str, float]:
    """``"auto"`` or a size such as ``"4GB"``, ``"500MB"``, ``"2G"``; returns megabytes
    (MiB, as SLURM counts them: ``"4GB"`` is 4096)."""
    if not isinstance(value, str):
        raise TypeError(f"`{name}` has to be 'auto' or a size such as '4GB' or "
                        f"'500MB', not {_show(value)}")
    if value == "auto":
        return value
    match = _MEMORY.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"`{name}` has to be 'auto' or a size such as '4GB' or "
                         f"'500MB', not {value!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    if unit == "":  # a bare number: SLURM reads it as megabytes
        return number
    return number * _UNIT_MB[unit]


def check_threshold_days(value: Any) -> Optional[int]:
    """``cleanup_threshold_days``: None or a whole number of days >= 0."""
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError("`cleanup_threshold_days` has to be None or a whole number of "
                        f"days >= 0, not {_show(value)}")
    if value < 0:
        raise ValueError("`cleanup_threshold_days` has to be None or a whole number of "
                         f"days >= 0, not {value}")
    return int(value)


def check_creatable_folder(path: str, name: str = "output_dir") -> None:
    """Raise now if the folder ``path`` cannot be created (or written) later: a file
    on the way, a read-only file system, or no permission."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    action = "written" if existing == path else "created"
    if not os.path.isdir(existing):
        raise _path_error(errno.ENOTDIR, f"`{name}` {path!r} cannot be {action}: "
                          f"{existing!r} is a file, not a folder")
    if os.access(existing, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    raise _path_error(code, f"`{name}` {path!r} cannot be {action}: {existing!r} is "
                            "not writable")


def _path_error(code: int, message: str) -> PathParameterError:
    error = PathParameterError(f"{message} ({os.strerror(code)})")
    error.errno = code
    return error


# ---------------------------------------------------- cleanup_threshold_days
#: The name of a folder acme (and esi-acme) made itself: ACME_YYYYMMDD-hhmmss-ffffff.
_AUTO_FOLDER = re.compile(r"^ACME_(\d{8}-\d{6}-\d{6})$")
#: More auto-generated folders than this: a warning even without cleanup_threshold_days.
MANY_FOLDERS = 20
_DAY = 86400.0


def _auto_folders(base: str) -> list[tuple[str, float]]:
    """``(path, age in seconds)`` of every auto-generated folder in ``base``: a real
    folder (no link) with an ``ACME_<time>`` name that is a valid time. The age counts
    from its newer of creation time (the name) and last change (mtime)."""
    found = []
    try:
        names = os.listdir(base)
    except OSError as exc:
        log.warning("could not look for old ACME folders in %s: %s", base, exc)
        return found
    now = time.time()
    for entry in sorted(names):
        match = _AUTO_FOLDER.match(entry)
        path = os.path.join(base, entry)
        try:
            made = datetime.datetime.strptime(match.group(1), "%Y%m%d-%H%M%S-%f") \
                if match else None
            info = os.lstat(path)
        except (ValueError, OSError):
            continue
        if made is None or not stat.S_ISDIR(info.st_mode):
            continue
        found.append((path, now - max(made.timestamp(), info.st_mtime)))
    return found


def _ask(question: str, valid: list[str], default: str) -> str:
    while True:
        answer = input(f"{question} [default: {default}] ").strip().lower() or default
        if answer in valid:
            return answer
        print(f"Please answer one of: {', '.join(valid[:3])}{', ...' if len(valid) > 3 else ''}")


def cleanup_old_folders(base: str, threshold_days: Optional[int],
                        interactive: bool) -> list[str]:
    """esi-acme's ``cleanup_threshold_days``: remove the auto-generated ``ACME_<time>``
    folders in ``base`` older than ``threshold_days`` whole days (0: all of them),
    asking first when ``interactive``. Without a threshold, only many such folders
    are reported (and, when interactive, a threshold is asked for). A folder that a
    running acme run holds is never removed. Returns the removed folders."""
    from .state import RunState
    folders = _auto_folders(base)
    if threshold_days is None:
        if len(folders) <= MANY_FOLDERS:
            return []
        log.warning("found %d auto-generated ACME folders in %s; "
                    "cleanup_threshold_days=N removes those older than N days",
                    len(folders), base)
        if not interactive:
            return []
        answer = _ask("Keep them all [k] or remove those older than N days (1-99)?",
                      ["k"] + [str(n) for n in range(1, 100)], "k")
        if answer == "k":
            return []
        threshold_days = int(answer)
    old = [(path, age) for path, age in folders
           if threshold_days == 0 or int(age // _DAY) > threshold_days]
    old = [(path, age) for path, age in old if RunState(path).holder() is None]
    if not old:
        log.info("no auto-generated ACME folders older than %d days in %s",
                 threshold_days, base)
        return []
    if interactive and _ask(f"Remove {len(old)} auto-generated ACME folder(s) older "
                            f"than {threshold_days} days in {base}? [y/n]",
                            ["y", "yes", "n", "no"], "n") in ("n", "no"):
        log.info("no old ACME folders removed")
        return []
    removed = []
    for path, age in old:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("could not remove the old ACME folder %s: %s", path, exc)
            continue
        removed.append(path)
        log.info("removed the old ACME folder %s (%d days old)", path, age // _DAY)
    return removed
