"""Checks of ParallelMap's parameters: wrong types raise TypeError, wrong values
ValueError, each naming the parameter and what was expected."""
from __future__ import annotations

import numbers
import os
import re
from typing import Any, Optional, Union

__all__ = ["check_bool", "check_auto_or_int", "check_optional_bool", "check_choice",
           "check_positive_number", "check_path", "check_logfile", "parse_memory",
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
